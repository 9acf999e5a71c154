"""PROTOTYPE, not product code: `fast` as version 1 (GELU) or version 2 (ReLU), judged at home and on ganC.

Question (issue 11): GELU was `fast`'s costliest elementwise step. Would ReLU train faster without costing the
held-out generator anything? `fast`'s generalisation figures had been earned with GELU, so the swap had to show
that first. It did (README "Generators it never saw": three seeds each, side by side), and ReLU became version 2,
the default; this script keeps both runnable for comparison.

Run (from the repository root, about 2.5 minutes a run on a 2-core AMX Xeon):

    python -m research.fast_activation gelu|relu --epochs 3 [--seed N] [--out-dir DIR]
"""

from __future__ import annotations

import sys

import benchmarks.generalization as generalization

import realfake.models.fast as fast

VARIANTS = {"gelu": (1, "recipe, version 1: GELU"), "relu": (2, "recipe, version 2: ReLU")}


def main(argv: list[str]) -> None:
    name, rest = argv[0], argv[1:]
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    version, note = VARIANTS[name]
    fast.VERSION = version  # FastNet() builds this version
    generalization.METHODS[name] = {"overrides": {"model": "fast"}, "limit": None, "epochs_x": 1, "note": note}
    generalization.main(rest + ["--methods", name])


if __name__ == "__main__":
    main(sys.argv[1:])
