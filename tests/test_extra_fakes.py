"""`train --extra-fakes`: extra FAKE images (e.g. the zoo's samples) go into the training split only, as a
stated share of its FAKE images, and the run files and reports say so; the home test split stays the data's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.clitools import assert_one_line_error, cli_inline

from realfake.config import RunConfig
from realfake.data.extra import PATH_PREFIX
from realfake.evaluation import run_data
from realfake.rundir import RunDir


def _write_fakes(root: Path, families: dict[str, int], real: int = 0) -> Path:
    rng = np.random.default_rng(0)
    for fam, n in {**families, **({"REAL/x": real} if real else {})}.items():
        folder = root / fam if fam.startswith("REAL") else root / "FAKE" / fam
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:06d}.jpg",
                                                                                   quality=75)
    return root


@pytest.fixture(scope="module")
def extra_run(mini_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny run (fast model, 200 images, 1 epoch) with 30 extra fakes of families famA and famB."""
    from realfake import training

    extra = _write_fakes(tmp_path_factory.mktemp("extra"), {"famA": 15, "famB": 15})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REALFAKE_CACHE_DIR", str(tmp_path_factory.mktemp("extra-cache")))
        cfg = RunConfig(data=str(mini_zip), limit=200, epochs=1, model="fast", weights="none", device="cpu",
                        seed=3, out=str(tmp_path_factory.mktemp("extra-run") / "run"), extra_fakes=str(extra),
                        extra_fakes_share=0.5, workers=1)
        return training.train(cfg, progress=False, log=lambda m: None), extra


def test_run_files_record_the_extra_fakes_and_their_share(extra_run: tuple[Path, Path]) -> None:
    run, extra = extra_run
    rd = RunDir(run)
    info, data = rd.info(), rd.read_json(RunDir.DATA_REPORT)
    for rec in (info["extra_fakes"], data["extra_fakes"]):
        assert rec["path"] == str(extra.resolve())
        assert rec["share_requested"] == 0.5
        assert rec["in_splits"] == ["train"]
        assert set(rec["per_family"]) <= {"famA", "famB"} and sum(rec["per_family"].values()) == rec["n_used"]
    rec = data["extra_fakes"]
    train = data["split"]["train"]
    # The extras took `share` of the FAKE training slots; the classes stay as balanced as the data's own split.
    assert rec["share"] == pytest.approx(rec["n_used"] / train["FAKE"])
    assert rec["n_used"] == min(round(0.5 * train["FAKE"]), 30)  # 30 extras: fewer than asked, all are used
    assert rec["n_own_fakes_dropped"] == rec["n_used"]  # they replace own fakes: FAKE count unchanged
    assert train["FAKE"] == train["REAL"]
    assert data["n_images"] == 200  # the data report's counts are the data's own images
    assert rd.read_yaml(RunDir.CONFIG)["extra_fakes"] == str(extra.resolve())


def test_extra_fakes_are_in_training_only(extra_run: tuple[Path, Path]) -> None:
    run, _ = extra_run
    rd = RunDir(run)
    split = rd.read_json(RunDir.SPLIT)
    ds = run_data(rd.config(), progress=False, log=lambda m: None)
    assert ds.extra_start == 200 and len(ds) == 230
    train = np.asarray(split["train"])
    n_used = rd.info()["extra_fakes"]["n_used"]
    assert int((train >= 200).sum()) == n_used > 0
    assert all(ds.paths[i].startswith(PATH_PREFIX) for i in train[train >= 200])
    for name in ("val", "test"):
        assert max(split[name]) < 200, name  # validation and the home test split: the data's own images
    assert {"famA", "famB"} & set(rd.read_json(RunDir.DATA_REPORT)["split_sources"]["train"])
    assert not {"famA", "famB"} & set(rd.read_json(RunDir.DATA_REPORT)["split_sources"]["test"])


def test_training_sources_include_the_families(extra_run: tuple[Path, Path]) -> None:
    run, _ = extra_run
    used = RunDir(run).info()["extra_fakes"]["per_family"]
    seen = RunDir(run).training_sources()
    assert seen is not None and set(used) <= seen


def test_report_and_model_card_say_so(extra_run: tuple[Path, Path]) -> None:
    run, _ = extra_run
    card = (run / RunDir.MODEL_CARD).read_text() if (run / RunDir.MODEL_CARD).exists() else None
    if card is None:
        from realfake.report.model_card import model_card

        card = model_card(run)
    html = (run / RunDir.REPORT).read_text()
    n_used = RunDir(run).info()["extra_fakes"]["n_used"]
    for text in (card, html):
        assert f"Trained also on {n_used:,} extra fakes" in text
        assert "famA" in text or "famB" in text
        assert "alone" in text


def test_a_real_image_in_the_extra_fakes_is_refused(mini_zip: Path, tmp_path: Path) -> None:
    extra = _write_fakes(tmp_path / "extra", {"famA": 2}, real=1)
    proc = cli_inline("train", "--data", mini_zip, "--extra-fakes", extra, "--limit", 200, "--model", "fast",
                      "--epochs", 1, "--weights", "none", "--device", "cpu", "--out", tmp_path / "run")
    assert_one_line_error(proc, "holds 1 REAL image(s)")
    assert not (tmp_path / "run").exists()


def test_a_missing_extra_fakes_set_is_refused(mini_zip: Path, tmp_path: Path) -> None:
    proc = cli_inline("train", "--data", mini_zip, "--extra-fakes", tmp_path / "nowhere", "--model", "fast",
                      "--out", tmp_path / "run")
    assert_one_line_error(proc, "no such folder or zip")


def test_share_is_validated() -> None:
    from realfake.errors import RealfakeError

    with pytest.raises(RealfakeError, match="extra_fakes_share"):
        RunConfig.from_sources(extra_fakes_share=0)
    assert json.loads(RunConfig().model_dump_json())["extra_fakes"] is None


def test_a_held_out_source_that_is_also_an_extra_family_is_refused(tmp_path: Path) -> None:
    """It would be trained on through the extras and then reported as never seen."""
    data = _write_fakes(tmp_path / "data", {"famA": 20, "famB": 20}, real=40)  # a data set with sources
    extra = _write_fakes(tmp_path / "extra", {"famA": 2})
    proc = cli_inline("train", "--data", data, "--extra-fakes", extra, "--protocol", "holdout:famA",
                      "--model", "fast", "--epochs", 1, "--weights", "none", "--device", "cpu",
                      "--out", tmp_path / "run")
    assert_one_line_error(proc, "a held-out source must not be trained on")
    assert not (tmp_path / "run").exists()
