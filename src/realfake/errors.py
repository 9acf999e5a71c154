"""One exception type for everything the user can fix, so faces print one line instead of a traceback."""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

class RealfakeError(Exception):
    """A problem the user can act on (bad path, bad data, bad option). Faces print it and exit non-zero."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its class name when it has none), at most `limit` characters:
    what a one-line error quotes of another library's error, which may run to pages."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]
