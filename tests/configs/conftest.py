"""Fixtures for running the bundle's own configs on tiny settings (the configs themselves are under test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundle.data import write_datalist

@pytest.fixture(scope="session")
def tiny_datalist(tmp_path_factory, data_dir) -> Path:
    """The committed 64 px LViT fixture converted by scripts/prepare_lvit.py (2 training, 1 validation, 1 test)."""
    from scripts.prepare_lvit import convert_lvit

    out = tmp_path_factory.mktemp("datalist") / "datalist.json"
    write_datalist(str(out), convert_lvit(str(data_dir / "lvit_tiny"), "he", log=lambda *a, **k: None))
    return out


@pytest.fixture()
def run_options(tiny_network_options, tiny_datalist, tmp_path) -> dict:
    """Overrides for a 2-epoch run of the real configs on the tiny data, writing only under tmp_path."""
    return {
        **tiny_network_options,
        "datalist": str(tiny_datalist),
        "ckpt_dir": str(tmp_path / "models"),
        "log_dir": str(tmp_path / "runs"),
        "output_dir": str(tmp_path / "eval"),
        "epochs": 2,
        "batch_size": 2,
    }


