"""bundle/utils.py: option parsing that the command line depends on."""

from __future__ import annotations

import pytest

from bundle.errors import BundleInputError
from bundle.utils import as_bool


@pytest.mark.parametrize("value,expected", [(True, True), (False, False), ("false", False), ("False", False),
                                            ("true", True), ("TRUE", True), ("0", False), (1, True), ("no", False)])
def test_as_bool_reads_command_line_spellings(value, expected):
    assert as_bool(value, "cprfl") is expected


def test_as_bool_refuses_anything_else():
    with pytest.raises(BundleInputError, match="option cprfl must be true or false, got 'maybe'"):
        as_bool("maybe", "cprfl")
