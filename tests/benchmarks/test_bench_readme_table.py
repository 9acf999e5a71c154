"""The README's results table is what benchmarks.readme_table makes of the committed results. Cheap (it reads
committed JSON): it stays in the fast tier."""

from __future__ import annotations

from benchmarks.common import REPO
from benchmarks.readme_table import table

README = REPO / "README.md"


def test_readme_results_table_is_regenerated_from_committed_results():
    assert table() in README.read_text(), "README's results table differs from `python -m benchmarks.readme_table`"


