"""The generalization benchmark runs end to end at a tiny size and writes the rows it promises (no accuracy
checks: one epoch on 200 images learns next to nothing)."""

import json
import math
from pathlib import Path

import pytest
from benchmarks.generalization import build_heldout, main, parse_args, table
from tests.conftest import SHARED_DATA

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


@pytest.mark.slow
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
