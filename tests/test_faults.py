"""Faults a user meets: a folder that cannot be written, a full disk, a kill -9, an ONNX graph that fails at
run time. Each ends in one line that names the file and says what to do (exit 1, no traceback), leaves no
half file and no temporary behind, and the command that continues (`train --resume`, `report`) works.

The faults are real: child processes run the `realfake` command with RLIMIT_FSIZE lowered (SIGXFSZ ignored,
so a write fails with EFBIG as on a full disk) or are held mid-write and killed with SIGKILL. Where and when
is decided by WRAPPER below, which patches the child's functions from environment variables: the product
code never reads them.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from tests.clitools import assert_one_line_error
from tests.data.childproc import SRC

from realfake.rundir import RunDir

pytestmark = [pytest.mark.skipif(os.name == "nt", reason="SIGKILL, flock, RLIMIT_FSIZE"),
              pytest.mark.slow]  # fault injection: children killed, disks filled, reruns

SEED = 7
TRAIN_FLAGS = ["--limit", "200", "--epochs", "3", "--batch-size", "32", "--weights", "none", "--device", "cpu",
               "--model", "fast", "--seed", str(SEED)]

# Runs `realfake ARGV`, with faults put in by environment variables (read here only, never by realfake):
#   REALFAKE_TEST_PAUSE_AT=NAME  print PAUSED and sleep when a finished temporary is about to be renamed to NAME
#                                (os.replace(tmp, .../NAME); NAME may be a glob): the write is under way, its
#                                temporary complete
#   REALFAKE_TEST_FULL_AT=WHAT   the disk is full (RLIMIT_FSIZE 0) while WHAT runs: history (write_history),
#                                weights (the final save_weights) or report (plots and report.html)
#   REALFAKE_TEST_FULL_CALL=N    ... on the Nth call of WHAT only (default 1): history 2 is epoch 2's
#   REALFAKE_TEST_AS_NOBODY=1    drop root (after importing the train command), so a read-only folder is one
WRAPPER = r"""
import fnmatch, functools, importlib, os, resource, signal, sys, time

if os.environ.get("REALFAKE_TEST_AS_NOBODY") and os.geteuid() == 0:
    import encodings.cp437, realfake.cli, realfake.config  # first: the interpreter may live under /root
    for name in ("realfake.training", "realfake.run"):  # realfake.run: older layouts
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    os.setgid(65534)
    os.setuid(65534)

pause_at = os.environ.get("REALFAKE_TEST_PAUSE_AT")
if pause_at:
    real_replace = os.replace
    def replace(src, dst, *a, **kw):
        if fnmatch.fnmatchcase(os.path.basename(os.fspath(dst)), pause_at):
            print("PAUSED", flush=True)
            time.sleep(600)
        return real_replace(src, dst, *a, **kw)
    os.replace = replace

def disk_full(fn):
    calls = [0]
    @functools.wraps(fn)
    def full(*a, **kw):
        calls[0] += 1
        if calls[0] != int(os.environ.get("REALFAKE_TEST_FULL_CALL", "1")):
            return fn(*a, **kw)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
        try:
            return fn(*a, **kw)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    return full

full_at = os.environ.get("REALFAKE_TEST_FULL_AT")
if full_at:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
    if full_at == "history":
        import realfake.fit as fit
        fit.write_history = disk_full(fit.write_history)
    elif full_at == "weights":
        for name in ("realfake.training", "realfake.run"):  # realfake.run: older layouts
            try:
                mod = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(mod, "save_weights"):
                mod.save_weights = disk_full(mod.save_weights)
    elif full_at == "report":
        import realfake.report.html as html
        html.build_report = disk_full(html.build_report)

from realfake.cli import app
app(sys.argv[1:], prog_name="realfake")
"""


def start(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRAPPER, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC, **(env or {})})


def realfake(*args: object, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`realfake ARGS` in a child, with WRAPPER's faults from `env`."""
    child = start(*args, env=env)
    out, err = child.communicate(timeout=timeout)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def kill_when_paused(child: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until the child says it is mid-write, then kill -9 it."""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(child.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=timeout)
        line = child.stdout.readline() if ready else ""
        assert line == "PAUSED\n", f"never paused (exit {child.poll()}): {line!r}"
    finally:
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err[-3000:]


def debris(run: Path) -> list[Path]:
    """What an interrupted write leaves: temporaries (files or folders) and aside copies."""
    return [p for p in run.rglob("*") if p.name.endswith((".tmp", ".old"))]


def error_line(proc: subprocess.CompletedProcess) -> str:
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    return line


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and wa[k].shape == wb[k].shape and bool((wa[k] == wb[k]).all()), k


# --- shared runs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("faults-cache")


@pytest.fixture
def cache(data_cache, monkeypatch):
    """One data cache for the module and its children: the stand-in zip is decoded once."""
    monkeypatch.setenv("REALFAKE_CACHE_DIR", str(data_cache))
    return data_cache


@pytest.fixture(scope="module")
def reference(mini_zip, data_cache, tmp_path_factory):
    """An uninterrupted run with TRAIN_FLAGS (in-process), to compare interrupted ones with."""
    from realfake import training
    from realfake.config import RunConfig

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REALFAKE_CACHE_DIR", str(data_cache))
        out = tmp_path_factory.mktemp("faults-ref") / "run"
        cfg = RunConfig(data=str(mini_zip), limit=200, epochs=3, batch_size=32, weights="none", device="cpu",
                        model="fast", seed=SEED, out=str(out))
        return training.train(cfg, progress=False, log=lambda m: None)


@pytest.fixture
def ref_copy(reference, tmp_path, cache):
    return Path(shutil.copytree(reference, tmp_path / "run"))


# --- 1. one line instead of a traceback ---------------------------------------------------------------


def test_train_out_with_a_file_in_the_way(tmp_path, mini_zip, cache):
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    proc = realfake("train", "--data", mini_zip, "--out", blocker / "run", *TRAIN_FLAGS)
    assert_one_line_error(proc, str(blocker / "run"))
    assert f"a file is in the way at {blocker}" in error_line(proc)
    assert blocker.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [blocker]


def test_train_out_that_is_a_file(tmp_path, mini_zip):
    """In-process (the CLI prints any RealfakeError in one line): --out names a file, not a folder."""
    from realfake import training
    from realfake.errors import RealfakeError

    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    with pytest.raises(RealfakeError, match="a file is in the way") as err:
        training.train(data=str(mini_zip), out=str(blocker), model="fast", weights="none", device="cpu", limit=200,
                       progress=False, log=lambda m: None)
    assert str(blocker) in str(err.value) and "\n" not in str(err.value)
    assert blocker.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [blocker]


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="drops root with setuid")
def test_train_out_under_a_read_only_folder(tmp_path, mini_zip, cache):
    """As root a read-only folder is writable anyway, so the child drops root (to nobody) first."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"realfake-ro-{os.getpid()}"  # pytest's tmp is 0700 (root)
    ro = base / "ro"
    ro.mkdir(parents=True)
    try:
        base.chmod(0o755)
        ro.chmod(0o555)
        proc = realfake("train", "--data", mini_zip, "--out", ro / "run", *TRAIN_FLAGS,
                        env={"REALFAKE_TEST_AS_NOBODY": "1"})
        assert_one_line_error(proc, str(ro / "run"))
        assert f"make {ro} writable" in error_line(proc)
        assert list(ro.iterdir()) == []
    finally:
        shutil.rmtree(base)


def test_export_out_with_a_file_in_the_way(ref_copy, tmp_path):
    """In-process (the CLI prints any RealfakeError in one line); it fails before the model is even loaded."""
    from realfake.errors import RealfakeError
    from realfake.export import export_onnx

    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    with pytest.raises(RealfakeError, match="a file is in the way") as err:
        export_onnx(ref_copy, blocker / "model.onnx")
    assert str(blocker / "model.onnx") in str(err.value) and "\n" not in str(err.value)
    assert blocker.read_text() == "keep me" and debris(tmp_path) == []


def test_write_errors_are_one_line_and_leave_no_temporary(tmp_path, monkeypatch):
    import errno

    from realfake.errors import RealfakeError

    run = RunDir(tmp_path / "run")
    run.write_json(RunDir.METRICS, {"accuracy": 0.5})
    real_replace = os.replace

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(RealfakeError) as err:
        run.write_json(RunDir.METRICS, {"accuracy": 0.9})
    monkeypatch.setattr(os, "replace", real_replace)
    msg = str(err.value)
    assert "\n" not in msg and str(run / RunDir.METRICS) in msg and "free disk space" in msg, msg
    assert ".tmp" not in msg  # the temporary's name means nothing to the user
    assert run.read_json(RunDir.METRICS) == {"accuracy": 0.5}
    assert sorted(p.name for p in run.path.iterdir()) == [RunDir.METRICS]


def test_disk_full_saving_the_weights_then_resume(ref_copy, reference):
    from realfake import training

    (ref_copy / RunDir.WEIGHTS).unlink()
    proc = realfake("train", "--resume", ref_copy, env={"REALFAKE_TEST_FULL_AT": "weights"})
    assert_one_line_error(proc, str(ref_copy / RunDir.WEIGHTS))
    assert f"realfake train --resume {ref_copy}" in error_line(proc)
    assert not (ref_copy / RunDir.WEIGHTS).exists() and debris(ref_copy) == []
    training.resume(ref_copy, progress=False, log=lambda m: None)
    same_weights(ref_copy / RunDir.WEIGHTS, reference / RunDir.WEIGHTS)
    assert debris(ref_copy) == []


def test_disk_full_writing_the_report_then_report(ref_copy):
    from realfake import report

    before = {p: p.read_bytes() for p in ref_copy.rglob("*") if p.is_file() and RunDir.TENSORBOARD not in p.parts}
    proc = realfake("report", ref_copy, env={"REALFAKE_TEST_FULL_AT": "report"})
    assert_one_line_error(proc, f"could not write {ref_copy}")
    assert f"realfake report {ref_copy}" in error_line(proc)
    after = {p: p.read_bytes() for p in ref_copy.rglob("*") if p.is_file() and RunDir.TENSORBOARD not in p.parts}
    assert after == before and debris(ref_copy) == []  # every figure, report.html, MODEL_CARD.md as they were
    assert report.build(ref_copy) == ref_copy / RunDir.REPORT


def _failing_onnx(path: Path) -> Path:
    """A realfake-looking ONNX file (input images uint8 [N,32,32,3], outputs p_fake and logit) that loads, but
    whose Reshape to [-1, 7] fails at run time: 32*32*3 values per image do not split into rows of 7."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["x", "shape"], ["rows"]),
        helper.make_node("ReduceMean", ["rows"], ["logit"], axes=[1], keepdims=0),
        helper.make_node("Sigmoid", ["logit"], ["p_fake"]),
    ]
    graph = helper.make_graph(
        nodes, "broken",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 32, 32, 3])],
        [helper.make_tensor_value_info("p_fake", TensorProto.FLOAT, [None]),
         helper.make_tensor_value_info("logit", TensorProto.FLOAT, [None])],
        initializer=[helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 7])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in {"threshold": "0.5", "temperature": "1.0", "class_names": '["REAL", "FAKE"]'}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_graph_failing_at_run_time_is_one_line(tmp_path):
    model = _failing_onnx(tmp_path / "model.onnx")
    image = tmp_path / "img.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    proc = realfake("predict", model, image)
    assert_one_line_error(proc, str(model))
    assert "realfake export" in error_line(proc)


# --- 2. an evaluation is replaced whole or not at all -----------------------------------------------------


def _images(root: Path, shade: int) -> Path:
    for i in range(4):
        for label, colour in (("REAL", (shade, 40 * i, 0)), ("FAKE", (0, 40 * i, shade))):
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), colour).save(root / label / f"{i}.png")
    return root


def test_failed_evaluation_leaves_the_previous_one_intact(ref_copy, tmp_path, monkeypatch):
    from realfake import evaluation

    evaluation.evaluate(ref_copy, _images(tmp_path / "a" / "other", 200), device="cpu", progress=False,
                        log=lambda m: None)
    folder = RunDir(ref_copy).evaluation("other").path
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {RunDir.METRICS, RunDir.PREDICTIONS, RunDir.SAMPLES} <= before.keys()

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(evaluation, "_write_samples", fail)  # after metrics.json and predictions.csv
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluation.evaluate(ref_copy, _images(tmp_path / "b" / "other", 90), device="cpu", progress=False,
                            log=lambda m: None)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert debris(ref_copy) == [] and [e.path for e in RunDir(ref_copy).evaluations()] == [folder]


# --- 3. kill -9, then carry on ------------------------------------------------------------------------------


def test_run_folder_writes_remove_dead_writers_temporaries_only(tmp_path):
    from realfake.atomic import atomic_dir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    dead = run / f".{RunDir.REPORT}.999999.x1y2.tmp"  # what a writer killed mid-write leaves (no lock held)
    dead.write_text("<html>half")
    with atomic_dir(run / RunDir.CHECKPOINT) as live:  # a writer at work in the same folder
        run.write_json(RunDir.INFO, {"status": "trained"})
        assert not dead.exists() and live.is_dir()


def test_kill_and_full_disk_mid_training_then_resume_gives_the_same_model(tmp_path, mini_zip, cache, reference):
    """One bad day, in the order a user would meet it (one chain: each step starts from the last one's run):
    killed while swapping in epoch 2's checkpoint; resumed, but the disk is full when epoch 2's history.csv
    is written; resumed again, and killed while writing report.html; then `realfake report`. No manual
    cleanup, no debris at the end, and the weights of the run that was never interrupted."""
    from realfake import report

    run = tmp_path / "run"
    kill_when_paused(start("train", "--data", mini_zip, "--out", run, *TRAIN_FLAGS,
                           env={"REALFAKE_TEST_PAUSE_AT": f".{RunDir.CHECKPOINT}.*.old"}))  # epoch 2's swap
    assert [p.name.startswith(f".{RunDir.CHECKPOINT}.") for p in debris(run)] == [True]  # the dead temporary
    history = (run / RunDir.HISTORY).read_bytes()

    proc = realfake("train", "--resume", run, env={"REALFAKE_TEST_FULL_AT": "history"})
    assert_one_line_error(proc, str(run / RunDir.HISTORY))
    assert f"realfake train --resume {run}" in error_line(proc) and "free disk space" in error_line(proc)
    assert (run / RunDir.HISTORY).read_bytes() == history  # epoch 1's, whole
    assert debris(run) == []  # the first kill's temporary went with the run's next write, though it failed

    kill_when_paused(start("train", "--resume", run, env={"REALFAKE_TEST_PAUSE_AT": RunDir.REPORT}))
    assert [p.name.startswith(f".{RunDir.REPORT}.") for p in debris(run)] == [True]

    assert report.build(run) == run / RunDir.REPORT
    assert debris(run) == []
    assert len((run / RunDir.HISTORY).read_text().splitlines()) == 4
    same_weights(run / RunDir.WEIGHTS, reference / RunDir.WEIGHTS)
