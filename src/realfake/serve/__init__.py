"""The REST API and web page face of realfake: `realfake serve RUN`, or `create_app(run_dir)` for any ASGI server."""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

from realfake.serve.app import create_app

__all__ = ["create_app"]
