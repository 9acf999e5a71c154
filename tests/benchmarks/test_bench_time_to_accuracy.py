"""benchmarks.time_to_accuracy's run names and its summary (the trainings themselves run only in the benchmark)."""

import pytest
from benchmarks.time_to_accuracy import RunSpec, parse_runs, summarize

pytestmark = pytest.mark.slow  # a benchmark's harness, not the product's behaviour


def test_run_names_parse_and_bad_ones_are_named():
    assert parse_runs("bf16x3, fp32x1,torchrun2:autox1") == [
        RunSpec("bf16x3", "bf16", 3, 1, False),
        RunSpec("fp32x1", "fp32", 1, 1, False),
        RunSpec("torchrun2:autox1", "auto", 1, 2, True),
    ]
    for bad, says in (("fp16x3", "'fp16x3'"), ("bf16x0", "'bf16x0'"), ("torchrun0:bf16x1", "'torchrun0:bf16x1'"),
                      ("bf16", "'bf16'"), (" , ", "no runs"), ("bf16x1,bf16x1", "twice")):
        with pytest.raises(ValueError, match=says):
            parse_runs(bad)


def _row(run, precision, epochs, acc, seconds, torchrun=False, target=0.995):
    return {"run": run, "precision": precision, "epochs": epochs, "processes": 1, "torchrun": torchrun,
            "test_accuracy": acc, "train_images_per_s": 90_000 * epochs / seconds, "train_seconds": seconds,
            "reaches_target": acc >= target, "time_to_target_s": seconds if acc >= target else None}


def test_the_fastest_run_at_the_target_wins_and_bf16_meets_its_own_fp32_twin():
    rows = [_row("fp32x3", "fp32", 3, 0.9952, 40.0), _row("bf16x1", "bf16", 1, 0.9956, 15.0),
            _row("fp32x1", "fp32", 1, 0.9945, 14.0), _row("torchrun1:bf16x3", "bf16", 3, 0.9953, 41.0, True),
            {"run": "bf16x9", "epochs": 9, "processes": 1, "torchrun": False, "error": ["boom"]}]
    s = summarize(rows, 0.995)
    assert s["fastest_run_reaching_target"] == "bf16x1" and s["time_to_target_s"] == 15.0  # fp32x1 is faster, short
    twins = s["reduced_precision_vs_fp32"]
    assert twins["bf16x1"]["vs"] == "fp32x1" and twins["bf16x1"]["accuracy_points"] == pytest.approx(0.11)
    assert "torchrun1:bf16x3" not in twins  # a torchrun run is not another process count's twin
    assert summarize([rows[2]], 0.995)["fastest_run_reaching_target"] is None
