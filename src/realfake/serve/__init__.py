"""The REST API and web page face of realfake: `realfake serve RUN`, or `create_app(run_dir)` for any ASGI server."""

from __future__ import annotations

from realfake.serve.app import create_app

__all__ = ["create_app"]
