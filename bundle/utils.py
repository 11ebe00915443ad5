"""Small helpers the configs call: atomic writes, option checks, device choice."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import torch

from .errors import BundleInputError

__all__ = ["atomic_write", "check_positive", "check_file", "default_device", "count_trainable_parameters"]


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
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def default_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def count_trainable_parameters(module: torch.nn.Module) -> int:
    """Number of parameters that receive gradients (how the LCPDN / TextDiff papers count)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
