"""Benchmarks: the measurements re-run to back the README's claims (realfake against a faithful Keras
re-implementation of the original notebook, time to accuracy, generalisation, serving, prediction from files, ...).

Run `python -m benchmarks.run` (or `make bench`) and the other suites as `python -m benchmarks.NAME`; each writes
benchmarks/results/<suite>/<machine>-<date>-<commit>.json (benchmarks.common.result_path), indexed in
benchmarks/results/INDEX.md. Nothing in the realfake package imports this, and it uses realfake's public API
only: one-off trials, which may patch internals, live in research/.
"""
