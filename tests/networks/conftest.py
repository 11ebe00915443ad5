"""The device of tests/networks/test_device.py: ``LCPDN_TEST_DEVICE`` (default cpu).

``scripts/gpu_check.py`` runs those tests with ``LCPDN_TEST_DEVICE=cuda``; asking for a device that is
not there fails (it never falls back to the CPU silently).
"""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    """``torch.device(LCPDN_TEST_DEVICE)``; CUDA must really be available when asked for."""
    dev = torch.device(os.environ.get("LCPDN_TEST_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"LCPDN_TEST_DEVICE={dev} but torch.cuda.is_available() is False")
    return dev
