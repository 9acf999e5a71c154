"""Prototypes: experiments kept for the record (how a figure in the README was measured), not product code.

They import the library but nothing imports them; each runs only as `python -m benchmarks.prototypes.NAME`.
"""
