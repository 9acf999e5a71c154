"""Nothing is removed that realfake did not create in the same call, and nothing non-finite is saved.

Regression tests for issue 26: `adapt --out X` deleted an existing `X.old` (the parent run itself, or any folder
of that name), `--overwrite` replaced folders that were no run, and a diverged training or fine-tuning wrote
NaN weights that call every image REAL, exit 0.
"""

from __future__ import annotations

import math
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from tests.clitools import assert_one_line_error, cli_inline

from realfake.adapt import AdaptOptions, adapt
from realfake.atomic import atomic_dir, existing_dir, existing_dirs
from realfake.errors import RealfakeError
from realfake.fit import save_weights
from realfake.rundir import RunDir

CPU = AdaptOptions(device="cpu")


def _quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def new_set(mini_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("newgen") / "newgen"
    with zipfile.ZipFile(mini_zip) as zf:
        for label in ("REAL", "FAKE"):
            names = sorted(m for m in zf.namelist() if m.startswith(f"test/{label}/") and m.endswith(".jpg"))[:24]
            (root / label).mkdir(parents=True)
            for m in names:
                (root / label / Path(m).name).write_bytes(zf.read(m))
    return root


# --- atomic_dir: its aside copy is its own, never a user's NAME.old ----------------------------------------


def test_atomic_dir_leaves_a_users_dot_old_folder_alone(tmp_path):
    target, theirs = tmp_path / "results", tmp_path / "results.old"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    for content in ("1", "2"):  # a first write (no target yet) and a replacement (target renamed aside)
        with atomic_dir(target) as tmp:
            (tmp / "x").write_text(content)
    assert (theirs / "keep.txt").read_text() == "mine"
    assert (target / "x").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "results.old"]  # no debris either


def test_a_crash_between_the_two_renames_keeps_the_old_copy_readable(tmp_path, monkeypatch):
    target = tmp_path / "entry"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("old")
    real_replace = os.replace

    def crash_on_the_swap(src, dst):
        if Path(dst) == target:
            raise KeyboardInterrupt  # stands in for a kill: the old folder is aside, the new one not yet in place
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_the_swap)
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "x").write_text("new")
    monkeypatch.undo()
    assert not target.exists()
    found = existing_dir(target)
    assert found is not None and found.name.startswith(".entry.") and (found / "x").read_text() == "old"
    assert existing_dirs(tmp_path) == {"entry": found}
    with atomic_dir(target) as tmp:  # the next write puts a new one in place and sweeps the aside
        (tmp / "x").write_text("new")
    assert (target / "x").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


# --- adapt --out / --overwrite ---------------------------------------------------------------------------------


def test_adapt_never_removes_a_folder_named_like_its_aside(trained_run, new_set, tmp_path):
    """The issue's reproduction: the parent is `runs/model.old`, the child `runs/model`."""
    parent = tmp_path / "runs" / "model.old"
    shutil.copytree(trained_run, parent)
    child = adapt(parent, new_set, tmp_path / "runs" / "model", CPU, progress=False, log=_quiet)
    assert RunDir(parent).has(RunDir.WEIGHTS) and RunDir(child).has(RunDir.WEIGHTS)
    # Replacing the child (a run realfake made) still leaves the parent where it was.
    adapt(parent, new_set, child, AdaptOptions(device="cpu", overwrite=True), progress=False, log=_quiet)
    assert RunDir(parent).has(RunDir.WEIGHTS)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["model", "model.old"]


def test_overwrite_replaces_only_a_run(trained_run, new_set, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    proc = cli_inline("adapt", trained_run, "--data", new_set, "--out", notes, "--overwrite", "--device", "cpu")
    assert_one_line_error(proc, "not one")
    assert (notes / "thesis.tex").read_text() == "years of work"

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert_one_line_error(cli_inline("adapt", trained_run, "--data", new_set, "--out", a_file, "--overwrite"),
                          "not a folder")
    assert a_file.read_text() == "x"


def test_adapt_refuses_bad_seed_and_infinite_rate_before_any_work(trained_run, new_set, tmp_path):
    out = tmp_path / "child"
    assert_one_line_error(cli_inline("adapt", trained_run, "--data", new_set, "--out", out, "--seed", "-1"),
                          "--seed must be between 0 and")
    assert_one_line_error(cli_inline("adapt", trained_run, "--data", new_set, "--out", out, "--finetune-head",
                                     "--lr", "inf"), "learning rate above 0 and at most 10")
    assert not out.exists()


def test_a_diverged_finetune_writes_nothing(trained_run, new_set, tmp_path, monkeypatch):
    """However fine-tuning ends in NaN weights (a rate that is finite but far too high, a bad batch), they are
    refused before the child is written: here the head is made to diverge outright."""
    import realfake.adapt as adapt_module

    real_finetune = adapt_module.finetune

    def diverging(model, *a, **kw):
        losses = real_finetune(model, *a, **kw)
        with torch.no_grad():
            next(adapt_module.head_of(model).parameters()).fill_(math.nan)
        return losses

    monkeypatch.setattr(adapt_module, "finetune", diverging)
    out = tmp_path / "child"
    with pytest.raises(RealfakeError, match="training diverged"):
        adapt(trained_run, new_set, out, AdaptOptions(device="cpu", finetune_head=True), progress=False, log=_quiet)
    assert not out.exists() and not list(tmp_path.iterdir())


# --- training: non-finite weights are never saved -----------------------------------------------------------


def test_save_weights_refuses_non_finite_tensors(tmp_path):
    path = tmp_path / "model.safetensors"
    with pytest.raises(RealfakeError, match=r"NaN or inf values \(head.weight\)"):
        save_weights({"stem": torch.ones(2), "head.weight": torch.tensor([1.0, math.nan])}, path)
    assert not path.exists()


def test_a_diverged_training_stops_with_one_line_and_saves_no_weights(mini_zip, tmp_path, monkeypatch):
    """However a run diverges (a rate too high for its data, a bad batch), no epoch of NaN weights is saved: here
    the optimizer's first step makes one weight NaN."""

    class Diverging(torch.optim.Adam):
        def step(self, closure=None):  # noqa: ANN001, ANN202 - torch's own signature
            loss = super().step(closure)
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(math.nan)
            return loss

    monkeypatch.setattr(torch.optim, "Adam", Diverging)
    run = tmp_path / "run"
    proc = cli_inline("train", "--data", mini_zip, "--limit", "100", "--epochs", "2", "--batch-size", "32",
                      "--model", "fast", "--weights", "none", "--device", "cpu", "--out", run)
    assert_one_line_error(proc, "training diverged in epoch 1")
    assert "--lr" in proc.stderr
    assert not (run / RunDir.WEIGHTS).exists() and existing_dir(run / RunDir.CHECKPOINT) is None


def test_a_rate_that_would_overflow_adam_is_refused_before_any_work(tmp_path):
    """1e38 overflowed float32 inside Adam's step: a traceback, after the data had loaded."""
    run = tmp_path / "run"
    assert_one_line_error(cli_inline("train", "--lr", "1e38", "--out", run), "lr: Input should be less than or equal")
    assert not run.exists()
