"""SECURITY.md stays true: every OWASP row names tests, and every test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
SECURITY = (ROOT / "SECURITY.md").read_text(encoding="utf-8")

#: `file.py::test_name`, or `::test_name` for the file named last in the same cell.
_REFERENCE = re.compile(r"`(?:([\w/]+\.py))?::(test_\w+)`")


def _owasp_rows() -> list[str]:
    return [line for line in SECURITY.splitlines() if re.match(r"\| API\d+ ", line)]


def test_every_owasp_2023_risk_has_a_row() -> None:
    numbers = [int(re.match(r"\| API(\d+) ", row)[1]) for row in _owasp_rows()]  # type: ignore[index]
    assert numbers == list(range(1, 11))


def test_every_row_names_a_test_and_every_named_test_exists() -> None:
    for row in _owasp_rows():
        proven_by = row.rstrip(" |").rsplit("|", 1)[1]
        references = _REFERENCE.findall(proven_by)
        assert references, f"no test named for: {row[:60]}"
        current = None
        for file, name in references:
            current = file or current
            assert current is not None, f"{name} has no file before it in: {row[:60]}"
            source = (TESTS / current).read_text(encoding="utf-8")
            assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"{current}::{name}"
