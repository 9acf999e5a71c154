"""`python -m realfake` is the `realfake` command."""

from realfake.cli import app

app()
