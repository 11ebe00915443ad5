"""One exception type for every problem a user can fix (bad file, bad override, missing weights).

Processes that ``import bundle`` (every config does) end on an uncaught error with exit status 1 and,
for a :class:`BundleInputError`, one ``ERROR:`` line instead of a deep stack trace; set
``LCPDN_TRACEBACK=1`` to see the full traceback. :class:`InputErrorLogFilter`, put on the root logger's
handlers (those of ``configs/logging.conf``), drops the log records that ignite and MONAI's handlers
write while such an error unwinds an engine, so the ERROR line is the only one.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from types import TracebackType

__all__ = ["BundleInputError", "InputErrorLogFilter", "find_input_error", "install_excepthook"]

_PREFIX = "BundleInputError: "


class BundleInputError(ValueError):
    """A problem with the user's input (data, config override, weights path) and what to do about it."""


def find_input_error(exc: BaseException | None) -> str | None:
    """Return the message of the first :class:`BundleInputError` in ``exc``'s cause/context chain.

    DataLoader workers re-raise errors as new exceptions that carry the original traceback as text, so the
    text is searched as well.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, BundleInputError):
            return str(exc)
        for line in str(exc).splitlines():
            if _PREFIX in line:
                return line.split(_PREFIX, 1)[1]
        exc = exc.__cause__ or exc.__context__
    return None


def _tracebacks_wanted() -> bool:
    return bool(os.environ.get("LCPDN_TRACEBACK"))


class InputErrorLogFilter(logging.Filter):
    """Drops ERROR records logged while a :class:`BundleInputError` is being handled.

    ignite logs "Engine run is terminating due to exception" and MONAI's ``StatsHandler`` logs the full
    traceback from inside the ``except`` block that handles the error; both are dropped here (unless
    ``LCPDN_TRACEBACK=1``), and the excepthook prints the one ``ERROR:`` line at exit.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _tracebacks_wanted() and record.levelno >= logging.ERROR:
            exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
            if find_input_error(exc) is not None:
                return False
        return True


def _is_quiet_rank() -> bool:
    """A torchrun worker other than rank 0: rank 0 alone reports, so an error prints once."""
    return os.environ.get("RANK", "0") not in ("", "0")


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, _default=sys.excepthook
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        _default(exc_type, exc, tb)
        return
    message = find_input_error(exc)
    if message is None or _tracebacks_wanted():
        text = "".join(traceback.format_exception(exc_type, exc, tb))
    elif _is_quiet_rank():
        text = ""
    else:
        text = f"ERROR: {message}\n(set LCPDN_TRACEBACK=1 for the full traceback)\n"
    # straight to the process's stderr: torch.distributed's hook (init_process_group) wraps this one and
    # buffers sys.stderr until it returns, which it never does
    stream = sys.__stderr__ or sys.stderr
    for out, data in ((stream, text), (sys.stdout, "")):
        try:
            out.write(data)
            out.flush()
        except (OSError, ValueError, AttributeError):
            pass
    # a failed run exits 1, never by a signal: interpreter shutdown with library threads still running
    # (ITK's pool, data-loading threads) can end in std::terminate (SIGABRT) once output is a pipe
    os._exit(1)


_LOG_FILTER = InputErrorLogFilter()


def install_excepthook() -> None:
    """End uncaught errors with status 1, :class:`BundleInputError` chains as one line (idempotent).

    Also puts :class:`InputErrorLogFilter` on the root logger's handlers (``monai.bundle run`` has set
    them up from ``configs/logging.conf`` before the configs import this package).
    """
    if sys.excepthook is not _excepthook and sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
    for handler in logging.getLogger().handlers:
        if _LOG_FILTER not in handler.filters:
            handler.addFilter(_LOG_FILTER)
