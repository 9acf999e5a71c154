"""The run folder's one read rule, seen from every door: a damaged file is one line naming it, from every
command; a missing one reads as empty; an evaluation can never write over the run's own files."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tests.clitools import assert_one_line_error, cli, cli_inline

from realfake.detector import Detector
from realfake.errors import RealfakeError
from realfake.rundir import RunDir
from realfake.serve.app import create_app


def test_missing_reads_empty_and_damaged_names_the_file(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_json(RunDir.INFO) == {} and run.read_yaml(RunDir.CONFIG) == {}
    (tmp_path / RunDir.INFO).write_text("{not json")
    with pytest.raises(RealfakeError, match=r"run\.json is damaged \(not valid JSON") as err:
        run.info()
    assert str(tmp_path / RunDir.INFO) in str(err.value) and "\n" not in str(err.value)
    (tmp_path / RunDir.METRICS).write_text("[1, 2]")
    with pytest.raises(RealfakeError, match="holds a list, not a mapping"):
        run.read_json(RunDir.METRICS)
    (tmp_path / RunDir.CONFIG).write_bytes(b"model: \xff\xfe\n")
    with pytest.raises(RealfakeError, match="not UTF-8"):
        run.config()
    (tmp_path / RunDir.CONFIG).write_text("epochs: -3\n")
    with pytest.raises(RealfakeError, match=r"config\.yaml is damaged .*epochs"):
        run.config()


def test_writes_are_atomic_and_leave_no_temporaries(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_json(RunDir.METRICS, {"accuracy": 1.0})
    assert run.update_info(status="x") == {"status": "x"} and run.update_info(a=1) == {"status": "x", "a": 1}
    assert sorted(p.name for p in run.path.iterdir()) == [RunDir.METRICS, RunDir.INFO]


@pytest.mark.parametrize(
    ("data", "name"),
    [("../x/ganC-fake.zip", "ganC-fake.zip"), ("SOMEDIR/..", "data"), ("..", "data"), (".", "data"), ("", "data"),
     ("/", "data"), ("a/b/", "b"), ("we ird/na me!.zip", "na-me-.zip"), ("..\\..\\evil", "evil"),
     (".hidden", "hidden")],
)
def test_an_evaluation_always_writes_inside_run_evaluations(tmp_path, data, name):
    run = RunDir(tmp_path / "run")
    out = run.evaluation(data)
    assert out.path.parent == run.path / RunDir.EVALUATIONS and out.path.name == name


@pytest.fixture
def damaged_run(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / RunDir.INFO).write_text('{"model": "seed-resnet50", "threshold": ')  # cut off mid-write
    return run


@pytest.mark.slow
def test_a_damaged_run_json_is_one_line_from_every_command(damaged_run, tmp_path, mini_zip):
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(image)
    commands = [
        ("predict", damaged_run, image),
        ("evaluate", damaged_run, "--device", "cpu"),
        ("evaluate", damaged_run, "--data", mini_zip, "--device", "cpu"),
        ("robustness", damaged_run, "--device", "cpu"),
        ("report", damaged_run),
        ("export", damaged_run),
        ("train", "--resume", damaged_run),
    ]
    # serve in a real child process: should it not refuse, in this process it would serve until killed
    served = cli("serve", damaged_run, "--port", "1", check=False, timeout=300)
    for args, proc in [*((args, cli_inline(*args)) for args in commands), (("serve",), served)]:
        assert_one_line_error(proc, "run.json is damaged")
        assert len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)


def test_model_info_is_complete_for_an_app_built_from_a_detector(trained_run):
    """create_app(Detector) reports the run's training data and test metrics, as create_app(path) does."""
    from_path = TestClient(create_app(trained_run, device="cpu")).get("/v1/model").json()
    from_detector = TestClient(create_app(Detector.load(trained_run, device="cpu"))).get("/v1/model").json()
    assert from_detector == from_path
    assert from_detector["training_data"]["n_images"] > 0 and from_detector["test_metrics"]["accuracy"] is not None
