"""Fixtures for running the bundle's own configs on tiny settings (the configs themselves are under test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from monai.bundle import ConfigWorkflow

from bundle.data import write_datalist
from bundle_cli import METADATA, TRAIN

@pytest.fixture(scope="session")
def tiny_datalist(tmp_path_factory, data_dir) -> Path:
    """The committed 64 px LViT fixture converted by scripts/prepare_lvit.py (2 training, 1 validation, 1 test)."""
    from scripts.prepare_lvit import convert_lvit

    out = tmp_path_factory.mktemp("datalist") / "datalist.json"
    write_datalist(str(out), convert_lvit(str(data_dir / "lvit_tiny"), "he", log=lambda *a, **k: None))
    return out


def tiny_run_options(network_options: dict, datalist: Path, out: Path) -> dict:
    """Overrides for a 2-epoch run of the real configs on the tiny data, writing only under ``out``."""
    return {
        **network_options,
        "datalist": str(datalist),
        "ckpt_dir": str(out / "models"),
        "log_dir": str(out / "runs"),
        "output_dir": str(out / "eval"),
        "epochs": 2,
        "batch_size": 2,
    }


@pytest.fixture()
def run_options(tiny_network_options, tiny_datalist, tmp_path) -> dict:
    """:func:`tiny_run_options` under the test's tmp_path."""
    return tiny_run_options(tiny_network_options, tiny_datalist, tmp_path)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_network_options, tiny_datalist):
    """One tiny model trained for 2 epochs on the tiny datalist, shared by the config tests (its options dict)."""
    options = tiny_run_options(tiny_network_options, tiny_datalist, tmp_path_factory.mktemp("trained"))
    wf = ConfigWorkflow(config_file=TRAIN, meta_file=METADATA, workflow_type="train", **options)
    wf.initialize()
    wf.run()
    wf.finalize()
    return options
