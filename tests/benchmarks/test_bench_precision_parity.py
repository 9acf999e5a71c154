"""benchmarks.precision_parity on a tiny bf16 run: fp32 and bf16 verdicts compared, fused against unfused."""

from __future__ import annotations

import pytest
from benchmarks.precision_parity import parity

pytestmark = pytest.mark.slow  # a benchmark's smoke run, not the product's behaviour


def test_precision_parity_benchmark_compares_a_runs_verdicts(bf16_run):
    out = parity(bf16_run)
    assert set(out["by_precision"]) == {"fp32", "bf16"} and out["n"] > 0
    assert out["by_precision"]["bf16"]["precision"] == "bf16" and out["by_precision"]["fp32"]["precision"] == "fp32"
    assert 0 <= out["verdicts_differ"] <= out["n"] and 0 < out["max_abs_logit_diff"] < 1
    fused = out["fused_vs_unfused"]
    assert fused["fp32"]["layers"]["batchnorm_folded"] > 0 and fused["fp32"]["max_abs_logit_diff"] < 1e-3
    assert fused["fp32"]["verdicts_differ"] <= 1 and 0 <= fused["bf16"]["verdicts_differ"] <= out["n"]


