"""One exception type for everything the user can fix, so faces print one line instead of a traceback."""

from __future__ import annotations


class RealfakeError(Exception):
    """A problem the user can act on (bad path, bad data, bad option). Faces print it and exit non-zero."""
