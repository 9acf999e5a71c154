"""The benchmark harness runs end to end at a tiny size and writes the JSON it promises (no timing checks)."""

import importlib.util
import json
import math

import pytest
from benchmarks.run import main, ratio, steady_throughput

REQUIRED = [
    ("ratios", "seed_resnet50_train_throughput"),
    ("ratios", "fast_train_throughput"),
    ("ratios", "fast_predict_throughput"),
    ("ratios", "fast_predict_from_files_throughput"),
    ("pipeline", "fast_predict_from_files_vs_bare_model"),
    ("accuracy", "reference"),
    ("accuracy", "seed_resnet50"),
    ("accuracy", "fast"),
    ("cache", "decode_images_per_s"),
    ("cache", "reload_s"),
]


def test_steady_throughput_leaves_out_warm_up():
    # epoch 1 (slow, warm-up) is ignored when there are more epochs
    assert steady_throughput([[(10, 100.0)], [(10, 1.0), (10, 1.0)]]) == pytest.approx(10.0)
    # one epoch: its first fifth of the batches is the warm-up
    one = [[(10, 50.0)] + [(10, 1.0)] * 9]
    assert steady_throughput(one) == pytest.approx(10.0)
    assert steady_throughput([[(4, 2.0)]]) == pytest.approx(2.0)  # a single batch is all there is
    assert math.isnan(steady_throughput([]))


def test_ratio_is_none_when_a_figure_is_missing():
    assert ratio(10.0, 2.0) == 5.0
    assert ratio(None, 2.0) is None and ratio(1.0, 0.0) is None and ratio(float("nan"), 1.0) is None


@pytest.mark.slow
def test_benchmark_runs_at_tiny_size_and_writes_valid_json(mini_zip, tmp_path):
    # find_spec, not import: TensorFlow loaded into this process makes a later torch/triton import crash, which
    # is also why the harness runs the reference in a child process.
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        pytest.skip("the bench extra (tensorflow, keras) is not installed: pip install -e '.[bench]'")
    path = main([
        "--data", str(mini_zip), "--limit", "100", "--epochs", "1", "--predict-n", "32", "--latency-n", "2",
        "--no-full-decode", "--files-n", "64", "--files-reps", "1", "--weights", "none", "--reference-weights", "none",
        "--device", "cpu",
        "--out-dir", str(tmp_path / "results"),
    ])
    assert path.parent == tmp_path / "results" and path.suffix == ".json"
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left behind
    results = json.loads(path.read_text())
    for section, key in REQUIRED:
        value = results[section][key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (section, key, value)
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]
    for name in ("reference", "seed-resnet50", "fast"):
        m = results["models"][name]
        assert 0.0 <= m["test_accuracy"] <= 1.0 and m["epochs_run"] == 1
        assert m["latency_ms_p50"] > 0 and m["predict_images_per_s"] > 0
    assert results["models"]["fast"]["train_mflop"] < results["models"]["seed-resnet50"]["train_mflop"]
    files = results["models"]["fast"]["predict_from_files"]
    assert files["n_files"] == 64 and files["where_the_time_goes_s"]["model"] > 0
    assert results["models"]["reference"]["weights_used"] == "none"
