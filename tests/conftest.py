"""Test-wide settings: offline hub, deterministic CPU, paths to committed fixtures."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository (= bundle) root."""
    return ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Committed test fixtures (tests/data, licences in tests/data/README.md)."""
    return DATA
