"""The generalization benchmark runs end to end at a tiny size and writes the rows it promises (no accuracy
checks: one epoch on 200 images learns next to nothing)."""

import json
import math
from pathlib import Path

import pytest
from benchmarks.generalization import build_heldout, main, parse_args, table
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.slow  # a benchmark's smoke runs, not the product's behaviour

GANC_ZIP = SHARED_DATA / "ganC-fake.zip"

SHARES = [
    ("home", "accuracy"), ("home", "real_uncertain"), ("heldout", "balanced_accuracy"), ("heldout", "fakes_caught"),
    ("heldout", "real_kept"), ("heldout", "roc_auc"), ("heldout", "ece"), ("heldout", "fakes_flagged_ood"),
    ("heldout", "fakes_confidently_wrong"), ("heldout", "fakes_uncertain"),
]


@pytest.fixture(scope="module")
def ganc_zip() -> Path:
    if not GANC_ZIP.is_file():
        pytest.skip(f"held-out data not found at {GANC_ZIP} (set REALFAKE_SHARED_DATA)")
    return GANC_ZIP


def test_generalization_benchmark_writes_rows_in_range(mini_zip, ganc_zip, tmp_path, capsys, monkeypatch):
    import realfake.report

    # The HTML reports that train and evaluate build (matplotlib, about half this test's time) are not what
    # is tested here; tests/report covers them.
    monkeypatch.setattr(realfake.report, "build", lambda run_dir: Path(run_dir) / "report.html")
    path = main([
        "--data", str(mini_zip), "--heldout", str(ganc_zip), "--methods", "fast", "--limit", "200", "--epochs", "1",
        "--n-heldout", "50", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
        "--out-dir", str(tmp_path / "results"),
    ])
    assert path.parent == tmp_path / "results" / "generalization" and path.suffix == ".json"
    assert not list(path.parent.glob(".*.tmp"))  # written atomically
    results = json.loads(path.read_text())
    assert results["complete"] is True and list(results["methods"]) == ["fast"]
    assert "benchmarks.generalization" in results["command"] and "--n-heldout" in results["command"]
    m = results["machine"]
    assert m["cpu"] and m["cores"] >= 1 and len(m["load_average_start"]) == 3 and len(m["load_average_end"]) == 3
    row = results["methods"]["fast"]
    assert row["heldout"]["n_real"] == 50 and row["heldout"]["n_fake"] == 50
    assert row["epochs_run"] == 1 and row["limit"] == 200 and row["train_seconds"] > 0
    for section, key in SHARES:
        v = row[section][key]
        assert isinstance(v, int | float) and math.isfinite(v) and 0.0 <= v <= 1.0, (section, key, v)
    # the confidently wrong are never more than the fakes let through
    assert row["heldout"]["fakes_confidently_wrong"] <= 1 - row["heldout"]["fakes_caught"] + 1e-9
    # the array path reproduces the run's own and `realfake evaluate`'s verdicts
    assert row["home"]["arrays_match_run_metrics"] and row["heldout"]["arrays_match_evaluate"]
    out = capsys.readouterr().out
    assert out.startswith("| method |") and "| fast |" in out
    assert table(results).splitlines()[2].startswith("| fast |")


def test_heldout_set_is_real_and_fake_folders_of_n_each(mini_zip, ganc_zip, tmp_path):
    picks = build_heldout(mini_zip, ganc_zip, 5, 0, tmp_path / "h")
    assert len(list((tmp_path / "h" / "REAL" / "standin-test").iterdir())) == 5
    assert len(list((tmp_path / "h" / "FAKE" / "ganC").iterdir())) == 5
    assert picks["REAL"]["available"] == 250 and picks["FAKE"]["n"] == 5
    with pytest.raises(SystemExit, match="fewer than --n-heldout"):
        build_heldout(mini_zip, ganc_zip, 251, 0, tmp_path / "h2")


def test_missing_data_and_unknown_method_are_one_line_errors(tmp_path):
    with pytest.raises(SystemExit, match="stand-in data not found"):
        main(["--data", str(tmp_path / "nope.zip"), "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        parse_args(["--methods", "fast,nope"])
    assert not list(tmp_path.iterdir())


def test_lofo_holds_each_family_out_of_its_fold(mini_zip, ganc_zip, tmp_path, capsys, monkeypatch):
    """Two tiny families, one epoch on 200 images: the split and the JSON's shape, not the figures' values."""
    import numpy as np
    from benchmarks.generalization import LOFO_FIGURES

    import realfake.report
    from realfake.rundir import RunDir
    from realfake.zoo.train import train_generator

    monkeypatch.setattr(realfake.report, "build", lambda run_dir: Path(run_dir) / "report.html")
    rng = np.random.default_rng(0)
    real = np.ascontiguousarray(rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8).repeat(4, 1).repeat(4, 2))
    families = ["gan-bilinear", "gan-nearest"]
    for fam in families:
        train_generator(real, fam, tmp_path / "zoo" / fam, seed=0, steps=2, batch_size=4)
    work = tmp_path / "work"
    path = main([
        "--lofo", "--zoo", str(tmp_path / "zoo"), "--data", str(mini_zip), "--heldout", str(ganc_zip),
        "--limit", "200", "--epochs", "1", "--n-heldout", "12", "--zoo-n", "30", "--device", "cpu",
        "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "results"), "--work-dir", str(work),
        "--methods", "fast,recipe-no-zoo",
    ])
    assert path.parent.name == "generalization-lofo" and not list(path.parent.glob(".*.tmp"))
    results = json.loads(path.read_text())
    lofo = results["lofo"]
    assert results["complete"] is True and lofo["families"] == families
    assert sorted(lofo["folds"]) == [f"{m}/s42/{f}" for m in ("fast", "recipe-no-zoo") for f in families]
    # the baseline: one run per seed without any zoo fakes, judged on every family
    baseline = [lofo["folds"][f"recipe-no-zoo/s42/{f}"] for f in families]
    assert baseline[0]["run"] == baseline[1]["run"] and all(r["trained_families"] == [] for r in baseline)
    assert "extra_fakes" not in RunDir(baseline[0]["run"]).read_yaml(RunDir.CONFIG) or \
        RunDir(baseline[0]["run"]).read_yaml(RunDir.CONFIG)["extra_fakes"] is None
    assert all(r["heldout"]["n_fake"] == 12 for r in baseline)
    for fam in families:
        other = next(f for f in families if f != fam)
        row = lofo["folds"][f"fast/s42/{fam}"]
        assert row["heldout_family"] == fam and row["trained_families"] == [other]
        assert row["heldout_in_training"] is False
        # the fold run's own files: the held-out family is nowhere in training or validation
        run = RunDir(row["run"])
        report, split = run.read_json(RunDir.DATA_REPORT), run.read_json(RunDir.SPLIT)
        assert other in report["split_sources"]["train"]
        for name in ("train", "val", "test"):
            assert fam not in report["split_sources"][name], name
        n_own = report["n_images"]
        assert max(split["val"]) < n_own and max(split["test"]) < n_own  # extras in training only
        extras = Path(run.read_yaml(RunDir.CONFIG)["extra_fakes"])
        assert sorted(p.name for p in (extras / "FAKE").iterdir()) == [other]
        # judged on its own held-out fakes (another seed than any training sample) and on ganC
        held = work / "folds" / f"s42-{fam}" / f"heldout-{fam}" / "FAKE" / fam
        trained_bytes = {p.read_bytes() for p in (work / "folds" / f"s42-{other}" / "extra-fakes" / "FAKE" / fam)
                         .iterdir()}
        assert len(list(held.iterdir())) == 12 and not {p.read_bytes() for p in held.iterdir()} & trained_bytes
        assert row["heldout"]["n_fake"] == 12 and row["heldout"]["n_real"] == 12
        assert row["ganC"]["n_fake"] == 12
        assert set(row["figures"]) == set(LOFO_FIGURES)
        for key in ("fakes_labelled_fake", "fakes_uncertain", "fakes_labelled_real"):
            assert 0 <= row["figures"][key] <= 1
        assert sum(row["figures"][k] for k in ("fakes_labelled_fake", "fakes_uncertain", "fakes_labelled_real")) \
            == pytest.approx(1, abs=1e-5)
    summary = lofo["summary"]["fast"]
    assert summary["all"]["n_folds"] == 2 and list(summary["per_seed"]) == ["42"]
    for key, worse in LOFO_FIGURES.items():
        values = [lofo["folds"][f"fast/s42/{f}"]["figures"][key] for f in families]
        assert summary["all"]["mean"][key] == pytest.approx(sum(values) / 2, abs=1e-6)
        assert summary["all"]["worst"][key]["value"] == worse(values)
        assert summary["all"]["worst"][key]["heldout_family"] in families
    out = capsys.readouterr().out
    assert "| fast: worst" in out.replace("**", "") and "| fast | 42 | gan-nearest |" in out
