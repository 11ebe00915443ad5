"""Small helpers the configs call: atomic writes, option checks, device choice."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .errors import BundleInputError

__all__ = [
    "as_bool",
    "atomic_write",
    "check_positive",
    "check_file",
    "default_device",
    "amp_kwargs",
    "count_trainable_parameters",
    "flatten",
    "read_checkpoint",
    "check_state_dict",
]


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    Nothing half-written is ever left under ``path``: a crash or error leaves the old file (or none).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0", "none", "null", "")


def as_bool(value: Any, name: str) -> bool:
    """Option ``name`` as a bool: ``--cprfl false`` reaches a config as the string "false", which is truthy.

    Accepts bools, 0 / 1 and (any case) true / false, yes / no, on / off; anything else is a clear error.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if value is None:
        return False
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise BundleInputError(f"option {name} must be true or false, got {value!r}")


def check_positive(value: Any, name: str, integer: bool = True) -> Any:
    """Return ``value`` if it is a positive number (integer when ``integer``), else a clear error."""
    if integer:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise BundleInputError(f"option {name} must be {kind}, got {value!r}")
    return value


def check_file(path: Any, name: str) -> str:
    """Return ``path`` if it is an existing file, else an error naming the option."""
    if not isinstance(path, str) or not os.path.isfile(path):
        raise BundleInputError(f"option {name}: file '{path}' does not exist")
    return path


def is_terminal() -> bool:
    """Whether progress bars have a terminal to draw on (stderr is a TTY); in a log file they are noise."""
    return bool(getattr(sys.stderr, "isatty", None) and sys.stderr.isatty())


def default_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def amp_kwargs(dtype: str = "float16") -> dict[str, torch.dtype]:
    """``amp_kwargs`` of MONAI engines for option ``amp_dtype`` (autocast runs on CUDA only)."""
    if dtype not in ("float16", "bfloat16"):
        raise BundleInputError(f"option amp_dtype must be float16 or bfloat16, got {dtype!r}")
    return {"dtype": getattr(torch, dtype)}


def count_trainable_parameters(module: torch.nn.Module) -> int:
    """Number of parameters that receive gradients (how the LCPDN / TextDiff papers count)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def flatten(items: Any) -> list:
    """Flatten nested lists (config lists that splice in other lists, e.g. modality transforms)."""
    out: list = []
    for item in items:
        out.extend(flatten(item) if isinstance(item, (list, tuple)) else [item])
    return out


def read_checkpoint(path: Any, option: str, what: str = "checkpoint") -> dict:
    """``torch.load`` a local checkpoint (weights only) with errors that name the option.

    A dict holding the weights under ``"state_dict"`` or ``"model"`` is unwrapped and a ``"module."``
    prefix (DataParallel / DDP) is stripped.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise BundleInputError(f"{what} '{path}' does not exist (option {option})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / not a torch file / pickled objects
        detail = (str(e).strip().splitlines() or [""])[0][:160]
        raise BundleInputError(
            f"{what} '{path}' cannot be read: it is not a complete PyTorch weights file ({type(e).__name__}: "
            f"{detail}) (option {option})"
        ) from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise BundleInputError(f"{what} '{path}' does not hold a state dict of tensors (option {option})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_state_dict(
    expected: dict, state: dict, source: str, hint: str, optional: Iterable[str] = (), what: str = "checkpoint"
) -> None:
    """Raise one clear error naming the first missing / unexpected / mis-shaped key of ``state``.

    Args:
        expected: the module's ``state_dict()``.
        state: the loaded weights.
        source: where they came from (file name), for the message.
        hint: what the user should check.
        optional: keys that may be absent from ``state`` (modules added on top of a published layout).
        what: how to call the file in the message.
    """
    optional = set(optional)
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return
    if missing:
        first = f"missing key '{missing[0]}'"
        if unexpected:  # most likely the same tensor under another name
            first += f" (checkpoint has unexpected key '{unexpected[0]}')"
    elif unexpected:
        first = f"unexpected key '{unexpected[0]}'"
    else:
        k = wrong[0]
        first = f"key '{k}' has shape {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
    raise BundleInputError(
        f"{what} '{source}' does not match the configured network: {first} ({len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(wrong)} wrong shape). {hint}"
    )
