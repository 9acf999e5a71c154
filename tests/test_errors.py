"""`one_line`: the one rule for quoting another library's error inside a one-line message."""

from __future__ import annotations

from realfake.errors import one_line


def test_one_line_keeps_the_first_line_cut_to_the_limit():
    assert one_line(ValueError("bad header\n  at byte 7\nmore")) == "bad header"
    assert one_line(ValueError("  \n")) == "ValueError"  # nothing said: the class names it
    assert one_line(OSError("x" * 500)) == "x" * 300
    assert one_line(OSError("x" * 500), 20) == "x" * 20
