"""One exception type for every problem a user can fix (bad file, bad override, missing weights).

Processes that ``import bundle`` (every config does) print such an error as one line instead of a deep
stack trace; set ``LCPDN_TRACEBACK=1`` to see the full traceback.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

__all__ = ["BundleInputError", "find_input_error", "install_excepthook"]

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


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, _default=sys.excepthook
) -> None:
    message = find_input_error(exc)
    if message is None or os.environ.get("LCPDN_TRACEBACK"):
        _default(exc_type, exc, tb)
        return
    print(f"ERROR: {message}\n(set LCPDN_TRACEBACK=1 for the full traceback)", file=sys.stderr)


def install_excepthook() -> None:
    """Print uncaught :class:`BundleInputError` chains as one line (idempotent)."""
    if sys.excepthook is not _excepthook and sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
