"""benchmarks.small_maps on a tiny budget: the small-map kernels and fused Adam timed against the convolution."""

from __future__ import annotations

import json

import pytest
from benchmarks.small_maps import LAYERS, SETTINGS, main

from realfake._kernels.small_maps import MIN_BATCH

pytestmark = pytest.mark.slow  # a benchmark's smoke run, not the product's behaviour


def test_the_benchmark_times_every_setting_and_layer(tmp_path):
    """benchmarks.small_maps, on a tiny budget: a row per (kernels, fused Adam, precision) and per layer shape."""
    out = main(["--batch", str(MIN_BATCH), "--steps", "1", "--rounds", "1", "--out", str(tmp_path / "s.json")])
    r = json.loads(out.read_text())
    assert len(r["training_step"]) == 2 * len(SETTINGS) and all(s["images_per_s"] > 0 for s in r["training_step"])
    plain = [s for s in r["training_step"] if s["kernels"] == "conv" and not s["fused_adam"]]
    assert [s["vs_conv_loop_adam_same_precision"] for s in plain] == [1.0, 1.0]
    assert len(r["layers_fwd_bwd"]) == len(LAYERS)
    assert all(row[f"{k}_{p}_ms"] > 0 for row in r["layers_fwd_bwd"] for k in ("conv", "small_maps")
               for p in ("fp32", "bf16"))


