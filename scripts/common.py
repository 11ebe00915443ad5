"""Helpers the command-line scripts share: one-line errors, short file listings, image listings, LViT text tables.

Every script's ``main`` ends in :func:`run_cli`, so a :class:`bundle.errors.BundleInputError` reaches the
user as one ``ERROR: ...`` line and exit status 2, whichever script raised it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bundle.data import RASTER_SUFFIXES
from bundle.errors import BundleInputError

__all__ = ["run_cli", "listing", "list_images", "read_text_table", "write_text_table"]


def run_cli(action: Callable[[], Any]) -> int:
    """Run a script's work; a :class:`BundleInputError` prints ``ERROR: <message>`` on stderr and gives 2
    (with ``LCPDN_TRACEBACK=1`` it is raised, traceback and all)."""
    try:
        action()
    except BundleInputError as e:
        if os.environ.get("LCPDN_TRACEBACK"):
            raise
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    return 0


_SHOWN = 5  # file names listed in an error before "... and N more"


def listing(names: Sequence[str]) -> str:
    """The first few ``names`` joined by commas, then "... and N more" (for error messages)."""
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def list_images(folder: str | os.PathLike) -> list[str]:
    """Sorted 2D image file names in ``folder`` (hidden files and non-image files are ignored)."""
    return sorted(
        f.name
        for f in Path(folder).iterdir()
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in RASTER_SUFFIXES
    )


def read_text_table(xlsx: str | os.PathLike) -> dict[str, str | None]:
    """Read an LViT ``<Split>_text.xlsx``: mask file name -> sentence (None where the cell is empty).

    The first sheet must have a header row with ``Image`` and ``Description`` columns (any case). A mask
    named on two rows is an error naming both rows.
    """
    import openpyxl  # local: only the converters need it

    xlsx = os.fspath(xlsx)
    try:
        wb = openpyxl.load_workbook(xlsx, read_only=True, data_only=True)
    except Exception as e:
        raise BundleInputError(
            f"cannot read text table '{xlsx}' ({type(e).__name__}: {e}); re-export it as .xlsx"
        ) from e
    try:
        rows = wb.worksheets[0].iter_rows(values_only=True)
        header = [str(c).strip().lower() if c is not None else "" for c in next(rows, ())]
        if "image" not in header or "description" not in header:
            raise BundleInputError(
                f"text table '{xlsx}' needs a header row with columns 'Image' (mask file name) and 'Description' "
                f"(sentence); its first row is {header}"
            )
        col_img, col_txt = header.index("image"), header.index("description")
        table: dict[str, str | None] = {}
        first_row: dict[str, int] = {}
        for r, row in enumerate(rows, start=2):
            cells = list(row) + [None] * (len(header) - len(row))
            key, text = cells[col_img], cells[col_txt]
            if key is None or not str(key).strip():
                if text is not None and str(text).strip():
                    raise BundleInputError(f"row {r} of text table '{xlsx}' has a Description but no Image file name")
                continue
            key = str(key).strip()
            if key in table:
                raise BundleInputError(
                    f"text table '{xlsx}' names mask '{key}' twice (rows {first_row[key]} and {r}); "
                    "keep one row per mask"
                )
            first_row[key] = r
            table[key] = str(text).strip() if text is not None and str(text).strip() else None
        return table
    finally:
        wb.close()


def write_text_table(xlsx: str | os.PathLike, rows: Iterable[tuple[str, str]]) -> str:
    """Write an LViT text table (header ``Image``, ``Description``) with (mask name, sentence) rows."""
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Image", "Description"])
    for name, text in rows:
        ws.append([name, text])
    wb.save(os.fspath(xlsx))
    return os.fspath(xlsx)
