"""Write the bundle as a MONAI model-zoo zip: ``<name>/{configs,docs,models,bundle,scripts,LICENSE,large_files.yml}``.

The name is the slug of ``configs/metadata.json``'s ``name`` and the version its ``version``; the zip is
what ``python -m monai.bundle download --name <name> --url <url of the zip>`` installs. Only what a user
runs is packed: the configs, the docs with the embedded demo data, the trained ``models/model.pt`` (when
present), the ``bundle`` package (sources only) and the data-preparation scripts. Tests, virtual
environments, caches, run outputs and other checkpoints stay out. The zip is written to a temporary
file and renamed, so a failure never leaves a partial zip behind.

Example::

    python scripts/package_zoo.py                      # dist/<name>_v<version>.zip
    python scripts/package_zoo.py --out /tmp/bundle.zip --model runs/best/model.pt
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/package_zoo.py`: make `bundle` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.errors import BundleInputError  # noqa: E402
from bundle.utils import atomic_write  # noqa: E402
from scripts.common import run_cli  # noqa: E402

__all__ = ["bundle_name", "bundle_files", "package_zoo", "main"]

ROOT = Path(__file__).resolve().parents[1]
#: folders packed whole (minus caches); files packed when present
FOLDERS = ("configs", "docs")
FILES = ("LICENSE", "large_files.yml")
REQUIRED = ("configs/metadata.json", "configs/inference.json", "LICENSE", "large_files.yml")
#: user-facing scripts (data preparation named in metadata.json) and the modules they import; dev tools such
#: as this one stay out
SCRIPTS = ("scripts/__init__.py", "scripts/prepare_lvit.py", "scripts/slice_ct.py", "scripts/check_dataset.py",
           "scripts/common.py")
SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".git", ".DS_Store"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp", "~")


def bundle_name(metadata: dict) -> str:
    """Zoo folder name from metadata ``name``: lower case, words joined by ``_`` (e.g. ``spleen_ct_segmentation``)."""
    name = re.sub(r"[^a-z0-9]+", "_", str(metadata.get("name", "")).lower()).strip("_")
    if not name:
        raise BundleInputError("configs/metadata.json has no 'name': give the bundle a name")
    return name


def read_metadata(root: Path) -> dict:
    """``configs/metadata.json`` of the bundle at ``root``, with a checked ``version``."""
    path = root / "configs" / "metadata.json"
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleInputError(f"cannot read '{path}' ({e}): is --root a bundle folder?") from e
    if not re.fullmatch(r"\d+\.\d+\.\d+", str(metadata.get("version", ""))):
        raise BundleInputError(f"'{path}': version {metadata.get('version')!r} is not MAJOR.MINOR.PATCH")
    return metadata


def _walk(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not SKIP_PARTS & set(rel.parts) and not path.name.endswith(SKIP_SUFFIXES):
            yield path


def bundle_files(root: Path, model: Path | None) -> dict[str, Path]:
    """Archive path (relative to the bundle folder) -> source file, in a stable order."""
    missing = [f for f in REQUIRED if not (root / f).is_file()]
    if missing:
        raise BundleInputError(f"bundle at '{root}' lacks {', '.join(missing)}: nothing packaged")
    files: dict[str, Path] = {}
    for folder in FOLDERS:
        files.update({p.relative_to(root).as_posix(): p for p in _walk(root / folder)})
    files.update({p.relative_to(root).as_posix(): p for p in _walk(root / "bundle") if p.suffix == ".py"})
    for rel in (*FILES, *SCRIPTS):
        if (root / rel).is_file():
            files[rel] = root / rel
    if model is not None:
        files["models/model.pt"] = model
    return dict(sorted(files.items()))


def package_zoo(root: str | Path = ROOT, out: str | Path | None = None, model: str | Path | None = None) -> Path:
    """Write the zoo zip of the bundle at ``root``; return its path.

    Args:
        root: bundle root (holds ``configs/metadata.json``).
        out: zip to write, or a folder (an existing one, or a path ending in ``/``) that receives
            ``<name>_v<version>.zip`` (default ``<root>/dist/``)
        model: trained weights packed as ``models/model.pt`` (default: ``<root>/models/model.pt`` when it
            exists; the zip then has no weights otherwise).
    """
    root = Path(root).resolve()
    metadata = read_metadata(root)
    name = bundle_name(metadata)
    zip_name = f"{name}_v{metadata['version']}.zip"
    if not out:
        out = root / "dist" / zip_name
    elif str(out).endswith(("/", "\\")) or Path(out).is_dir():
        out = Path(out) / zip_name
    else:
        out = Path(out)
        if out.suffix != ".zip":
            raise BundleInputError(f"--out '{out}' is neither a folder nor a .zip file name")
    if model is not None:
        model = Path(model)
        if not model.is_file():
            raise BundleInputError(f"model weights '{model}' do not exist (option --model)")
    elif (root / "models" / "model.pt").is_file():
        model = root / "models" / "model.pt"
    files = bundle_files(root, model)
    with atomic_write(str(out)) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, src in files.items():
            zf.write(src, f"{name}/{rel}")
    size = out.stat().st_size / 2**20
    weights = f"models/model.pt from {model}" if model else "NO models/model.pt (train one, or see large_files.yml)"
    print(f"wrote {out} ({len(files)} files, {size:.1f} MiB): bundle '{name}' v{metadata['version']}, {weights}")
    return out


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(ROOT), help="bundle root (default: this repository)")
    p.add_argument("--out", default=None, help="zip to write, or a folder for <name>_v<version>.zip (default: <root>/dist/)")
    p.add_argument("--model", default=None, help="weights to pack as models/model.pt (default: <root>/models/model.pt)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: package_zoo(args.root, args.out, args.model))


if __name__ == "__main__":
    sys.exit(main())
