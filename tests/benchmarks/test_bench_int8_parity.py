"""benchmarks.int8_parity on a small `fast` run: the fp32 and int8 ONNX files compared and timed."""

from __future__ import annotations

import pytest
from benchmarks.int8_parity import parity

pytestmark = pytest.mark.slow  # a benchmark's smoke run, not the product's behaviour


def test_int8_parity_benchmark_reads_the_run_and_compares_both_files(quantize_run):
    """benchmarks.int8_parity: both files on the run's test split, timed in turn; the run folder is only read."""
    before = sorted(p.name for p in quantize_run.iterdir())
    r = parity(quantize_run, batch=64, rounds=1)
    assert sorted(p.name for p in quantize_run.iterdir()) == before
    assert r["model"] == "fast" and r["n"] > 0 and set(r["by_file"]) == {"fp32", "int8"}
    assert r["by_file"]["int8"]["bytes"] < r["by_file"]["fp32"]["bytes"]  # int8 weights: a smaller file
    # The stated tolerance is checked on 500 images in tests/test_quantize.py; this run's test split has 40, one
    # image is 2.5 points (fast version 2 differed on 3 of them, version 1 on fewer, where both agree on 97.6-98.2%
    # of the 500).
    differ = round(r["n"] * (1 - r["label_agreement"]))
    assert r["n"] == 40 and differ <= 4 and abs(r["accuracy_points_int8_minus_fp32"]) <= 100 * 4 / r["n"]
    assert r["max_abs_logit_diff"] > 0 and all(f["images_per_s"] > 0 for f in r["by_file"].values())
    fp32, int8 = (r["by_file"][k]["images_per_s"] for k in ("fp32", "int8"))
    # the ratio is of the unrounded speeds, the images/s shown are rounded to 0.1: equal to the third decimal
    assert r["speedup_int8_vs_fp32"] == pytest.approx(int8 / fp32, abs=1e-3)
