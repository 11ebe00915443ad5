"""The repository contract: top-level layout, README set-up commands, CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)]


def test_readme_has_exactly_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    install_and_train, tests = commands
    assert "pip install" in install_and_train and "run training --config_file configs/train.json" in install_and_train
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()
    assert "-eq 5" in ci  # pytest's "no tests collected" is not a silent pass


def test_top_level_layout():
    for name in ("bundle", "configs", "docs", "scripts", "tests", "LICENSE", "pyproject.toml", "README.md"):
        assert (ROOT / name).exists(), name
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert "models/" in (ROOT / ".gitignore").read_text()


def zoo_json(text: str) -> str:
    """The model zoo's JSON style (pre-commit-hooks ``pretty-format-json --indent=4 --no-sort-keys``)."""
    import json

    return json.dumps(json.loads(text), indent=4, ensure_ascii=True, separators=(",", ": ")) + "\n"


def test_configs_are_formatted_the_zoo_way():
    files = sorted((ROOT / "configs").rglob("*.json"))
    assert len(files) >= 10
    unformatted = [str(f.relative_to(ROOT)) for f in files if f.read_text(encoding="utf-8") != zoo_json(f.read_text(encoding="utf-8"))]
    assert not unformatted, f"not zoo-formatted (run `pre-commit run pretty-format-json --all-files`): {unformatted}"
