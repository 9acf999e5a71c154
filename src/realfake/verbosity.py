"""Two levels of what a command says on stderr: the results a user acts on (always, through each function's
`log`), and how the machine runs the work (threads, precision and why, data placement), through `detail`.

Details go to the `realfake` logger at INFO, so they stay out of the way of progress bars unless asked for:
`realfake -v ...` turns them on (configure), and a Python caller sees them once it configures logging.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import logging
import sys

LOGGER = logging.getLogger("realfake")


def detail(message: str) -> None:
    """A line about how the work runs rather than what it found: shown with `-v` (or a caller's logging config)."""
    LOGGER.info(message)


class _Stderr(logging.Handler):
    """Writes each record to the sys.stderr of the moment (a test runner swaps it), as the message alone."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never end the command
            self.handleError(record)


def configure(verbose: bool) -> None:
    """The command line's setting: warnings and results by default, `verbose` adds the details. Called again, it
    replaces its own handler rather than adding a second."""
    for handler in [h for h in LOGGER.handlers if isinstance(h, _Stderr)]:
        LOGGER.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO if verbose else logging.WARNING)
