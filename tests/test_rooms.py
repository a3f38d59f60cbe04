"""Small rooms (issue 25, item 7): one concept per file, no file of the package over 250 lines."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lit_align"
LIMIT = 250


def test_no_file_in_the_package_is_over_250_lines():
    long = {str(path.relative_to(PACKAGE)): n for path in sorted(PACKAGE.rglob("*.py"))
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > LIMIT}
    assert not long, long
