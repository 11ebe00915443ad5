"""Model-zoo checks MONAI ships, run offline: ``verify_metadata`` (schema 0.8.1) and ``verify_net_in_out``."""

from __future__ import annotations

import json

from bundle_cli import INFERENCE, METADATA, ROOT, run_bundle_command

SCHEMA = str(ROOT / "tests" / "data" / "meta_schema_20240725.json")


def test_metadata_is_valid_against_the_offline_schema(tmp_path):
    ok = run_bundle_command(["verify_metadata", "--meta_file", METADATA, "--filepath", SCHEMA])
    assert ok.returncode == 0 and "metadata is verified with no error" in ok.stdout + ok.stderr, ok.stderr[-3000:]
    broken = json.loads(open(METADATA).read())
    del broken["network_data_format"]  # required by the schema: the same command must now fail
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    bad = run_bundle_command(["verify_metadata", "--meta_file", str(tmp_path / "metadata.json"), "--filepath", SCHEMA])
    assert bad.returncode != 0


def test_default_network_matches_the_metadata_in_and_out():
    """The default network (offline encoders, 256 px) takes metadata's input and gives its 2-channel output."""
    result = run_bundle_command(["verify_net_in_out", "network_def", "--meta_file", METADATA, "--config_file", INFERENCE])
    assert result.returncode == 0 and "data shape of network is verified with no error" in result.stdout + result.stderr, (
        result.stderr[-3000:]
    )
