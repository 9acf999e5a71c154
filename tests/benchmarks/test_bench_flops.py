"""The `fast` model's FLOP budget, counted by the benchmark's own counter (benchmarks.run.flops_per_image), so
the test checks the figure the benchmark reports. Cheap: it stays in the fast tier."""

from __future__ import annotations

from benchmarks.run import flops_per_image

from realfake.models.fast import FastNet


def test_fast_stays_within_its_flop_budget():
    flops = flops_per_image(FastNet())  # the benchmark's own counter, so the test checks what it reports
    assert 5 < flops["forward_mflop"] < 25  # ~17 MFLOP; ResNet50 at 32x32 is ~168
    assert flops["train_mflop"] < 80  # "a few tens of MFLOP per training image"; ResNet50 is ~500


