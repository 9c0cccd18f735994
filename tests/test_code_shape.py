"""The code's shape checks itself: no library function (outside cnnctl/cli/) over 80 lines or 10
parameters (scripts/check_size.py; ruff and mypy run in .ci/run)."""

from __future__ import annotations

import pytest

from scripts.check_size import offenders


@pytest.mark.quick
def test_no_library_function_is_too_long_or_too_wide():
    assert offenders() == []
