"""The benchmark harness runs end to end at a tiny size and writes the JSON it promises (no timing checks)."""

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
from benchmarks.common import REPO, machine_info, ratio, steady_throughput
from benchmarks.run import main, table

from realfake.device import ISA_FLAGS, cpu_info

pytestmark = pytest.mark.slow  # benchmark smoke runs (the Keras reference among them), not the product's behaviour

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


def test_machine_info_names_the_cpu_and_its_isa_flags():
    m = machine_info()
    assert m["cpu"] == cpu_info()["model"] and m["cpu"]
    assert set(m["isa"]) == set(ISA_FLAGS) and m["isa"] == cpu_info()["isa"]  # one place reads the CPU
    assert isinstance(m["native_bf16_cpu"], bool) and m["torch_threads"] >= 1 and len(m["load_average_start"]) == 3


def test_performance_page_speed_table_is_regenerated_from_the_json_it_names():
    page = (REPO / "docs" / "performance.md").read_text()
    named = re.findall(r"^Machine: .*From `(benchmarks/results/[^`]+\.json)`\.$", page, flags=re.M)
    assert named, "the performance page's Speed table should end with the machine line naming its JSON"
    for source in named:
        generated = table(json.loads((REPO / source).read_text()), source=source)
        assert generated in page, f"docs/performance.md's table differs from `benchmarks.run --table {source}`"


def test_benchmark_compares_precisions_side_by_side(mini_zip, tmp_path, capsys, monkeypatch):
    # The fp32-only extras (ONNX export: over a minute on a busy 2-core machine; the FLOP counter; TorchScript)
    # are covered by the test below: here they are stand-ins, so that only the precisions are timed.
    monkeypatch.setattr("benchmarks.run.run_onnx", lambda *a, **k: {"skipped": "not measured in this test"})
    monkeypatch.setattr("benchmarks.run.cpu_inference_variants", lambda *a: {})
    monkeypatch.setattr("benchmarks.run.flops_per_image", lambda m: {"forward_mflop": 1.0, "train_mflop": 3.0})
    # The busy-machine case (minutes of child processes beside a competitor, run by hand: README "On a busy
    # machine") stands in too: what is checked here is that the bench asks for it and carries its rows.
    asked: list[list[str]] = []

    def contention(argv):
        asked.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.write_text(json.dumps({"measured": "training's whole loop, 2 epochs", "limit": 50, "batch": 128,
                                   "model": "fast", "machine": {}, "settings": BUSY}))
        return out

    monkeypatch.setattr("benchmarks.contention.main", contention)
    path = main([
        "--data", str(mini_zip), "--limit", "100", "--epochs", "1", "--predict-n", "32", "--latency-n", "2",
        "--no-full-decode", "--models", "fast", "--precisions", "fp32,bf16", "--device", "cpu", "--files-n", "0",
        "--contention", "50", "--out-dir", str(tmp_path / "results"),
    ])
    results = json.loads(path.read_text())
    assert set(results["machine"]["isa"]) == set(ISA_FLAGS) and results["precision"]["asked"] == ["fp32", "bf16"]
    fast = results["precision"]["models"]["fast"]
    assert fast["baseline"] == "fp32" and [r["precision"] for r in fast["runs"].values()] == ["fp32", "bf16"]
    for run in fast["runs"].values():
        assert run["train_images_per_s"] > 0 and run["predict_images_per_s"] > 0 and 0 <= run["test_accuracy"] <= 1
    vs = fast["vs_baseline"]["bf16"]
    assert vs["train_throughput"] > 0 and vs["predict_throughput"] > 0 and abs(vs["accuracy_points"]) <= 100
    assert results["models"]["fast"]["precision"] == "fp32" and "onnx" in results["models"]["fast"]
    capsys.readouterr()
    assert main(["--table", str(path)]) == path  # the performance page's table, regenerated from the JSON
    printed = capsys.readouterr().out
    assert "bf16 / fp32" in printed and f"From `{path}`." in printed and results["machine"]["cpu"] in printed
    assert asked and asked[0][:5] == ["--loop", "--limit", "50", "--data", str(mini_zip)]
    assert results["contention"]["settings"] == BUSY and results["contention"]["limit"] == 50
    assert "| realfake's default (spinning threads, ThreadGovernor) | 2,094 | 1,253 | 120% |" in printed
    assert "| 1 thread | 2,378 | 1,462 | 140% |" in printed


# Two rows of benchmarks/results/contention/xeon-amx-2026-11-29-d1c7fa3-loop.json, as benchmarks.contention
# writes them.
BUSY = {
    "realfake's default (spinning threads, ThreadGovernor)": {
        "alone_img_s": 2094.2, "contended_img_s": 1253.4, "share_of_fair": 1.197,
        "thread_switches": {"alone": [], "contended": [{"threads": 1, "others_cores": 0.69, "img_s_before": 1098.4}]},
    },
    "1 thread": {"alone_img_s": 2378.4, "contended_img_s": 1461.7, "share_of_fair": 1.396,
                 "thread_switches": {"alone": [], "contended": []}},
}


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
    assert path.parent == tmp_path / "results" / "bench" and path.suffix == ".json"
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left behind
    results = json.loads(path.read_text())
    for section, key in REQUIRED:
        value = results[section][key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (section, key, value)
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]
    assert set(results["machine"]["isa"]) == set(ISA_FLAGS) and results["machine"]["load_average_end"]
    for name in ("reference", "seed-resnet50", "fast"):
        m = results["models"][name]
        assert 0.0 <= m["test_accuracy"] <= 1.0 and m["epochs_run"] == 1
        assert m["latency_ms_p50"] > 0 and m["predict_images_per_s"] > 0
    assert results["models"]["fast"]["train_mflop"] < results["models"]["seed-resnet50"]["train_mflop"]
    files = results["models"]["fast"]["predict_from_files"]
    assert files["n_files"] == 64 and files["where_the_time_goes_s"]["model"] > 0
    assert results["models"]["reference"]["weights_used"] == "none"
    int8 = results["models"]["fast"]["onnx"]["int8"]  # --int8-models defaults to fast
    assert int8["predict_images_per_s"] > 0 and 0.0 <= int8["test_accuracy"] <= 1.0
    assert int8["quantization"]["dtype"] == "int8" and results["ratios"]["fast_onnx_int8_vs_fp32"] > 0
    assert "int8" not in results["models"]["seed-resnet50"]["onnx"]
