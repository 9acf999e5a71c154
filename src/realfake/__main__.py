"""`python -m realfake` is the `realfake` command."""

__side__ = "face"  # see tests/test_layers.py

from realfake.cli import app

app()
