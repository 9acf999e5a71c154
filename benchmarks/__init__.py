"""Benchmarks: realfake against a faithful Keras re-implementation of the original notebook.

Run `python -m benchmarks.run` (or `make bench`). Nothing in the realfake package imports this: it is a
measuring stick, not a feature.
"""
