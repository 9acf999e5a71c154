"""`realfake predict --engine ray` on a local Ray (2 CPUs, started once for the module) gives exactly the rows of
the local `predict`: same inputs, same order, same numbers, same error rows."""

from __future__ import annotations

import json
import logging
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from realfake.cli import app
from realfake.detector import ROW_FIELDS
from realfake.errors import RealfakeError
from realfake.predict_ray import (
    MISSING_RAY,
    Plan,
    UriRef,
    _batch_row,
    _first_line,
    decode_row,
    list_sources,
    require_ray,
)

pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.slow  # Ray: `make test-slow` installs the ray extra, `make test` leaves it out

BAD = {"050b-empty.jpg": "empty file", "120b-text.png": "not an image", "170b-cut.jpg": "unreadable image",
       "more.zip::broken.png": "not an image", "missing.jpg": "unreadable file (FileNotFoundError"}


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of 2 CPUs with a small object store and no dashboard: a few seconds to start, once. Ray is imported
    here, not at the top: collecting the fast tier must not import it (or skip the module where it is missing)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=128 * 2**20, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def images(mini_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 stand-in images (10 in a subfolder), three bad files among them, a zip with a broken member."""
    root = tmp_path_factory.mktemp("ray-images")
    (root / "imgs" / "sub").mkdir(parents=True)
    with zipfile.ZipFile(mini_zip) as zf:
        members = sorted(n for n in zf.namelist() if n.startswith("test/") and n.endswith(".jpg"))[:200]
        for i, m in enumerate(members):
            (root / "imgs" / ("sub" if i >= 190 else "") / f"{i:03d}-{m.split('/')[1]}.jpg").write_bytes(zf.read(m))
    (root / "imgs" / "050b-empty.jpg").write_bytes(b"")
    (root / "imgs" / "120b-text.png").write_text("not an image")
    (root / "imgs" / "170b-cut.jpg").write_bytes(next((root / "imgs").glob("170-*.jpg")).read_bytes()[:60])
    (root / "imgs" / "sub" / ".hidden.jpg").write_bytes(b"skipped: hidden")
    with zipfile.ZipFile(root / "more.zip", "w") as zf:
        zf.write(next((root / "imgs").glob("000-*.jpg")), "ok.jpg")
        zf.writestr("broken.png", b"\x89PNG\r\n\x1a\n broken")
    return root


def _json_rows(path: Path) -> list[dict]:
    """JSON rows with every column, null where a row leaves it out: comparable to Parquet's rows."""
    return [{k: row.get(k) for k in ROW_FIELDS} for row in map(json.loads, path.read_text().splitlines())]


def test_ray_engine_gives_exactly_the_local_rows(local_ray, trained_run, images, tmp_path, monkeypatch):
    monkeypatch.chdir(images)
    sources = ["imgs", "more.zip", "missing.jpg"]  # relative, as typed: rows name them so, workers read them whole
    uri = (images / "imgs" / "sub").as_uri()  # a URI pyarrow opens: the 10 images of sub/ listed a second time
    common = ["--batch-size", "64", "--device", "cpu"]  # several batches for the two actors, bad files across them
    local = CliRunner().invoke(app, ["predict", str(trained_run), *sources, "imgs/sub", *common,
                                     "--out", str(tmp_path / "local.jsonl")])
    assert local.exit_code == 0, local.output
    on_ray = CliRunner().invoke(app, ["predict", str(trained_run), *sources, uri, *common, "--engine", "ray",
                                      "--out", str(tmp_path / "ray.parquet")])
    assert on_ray.exit_code == 0, on_ray.output
    assert on_ray.stdout == ""  # the rows went to the file

    expected = _json_rows(tmp_path / "local.jsonl")
    assert len(expected) == 200 + 3 + 2 + 1 + 10
    for row in expected[-10:]:  # the same files, named by the URI they were read through
        row["path"] = (images / row["path"]).as_uri()
    got = pq.read_table(tmp_path / "ray.parquet").to_pylist()
    # row for row: order, p_fake, label, reason, threshold, ood, size, crop and errors; the log-odds, written in
    # full, to the float noise of a model computing on one thread in an actor instead of all of them
    logits = [(g.pop("logit"), e.pop("logit")) for g, e in zip(got, expected, strict=True)]
    assert got == expected
    assert all((a is None and b is None) or a == pytest.approx(b, rel=1e-5, abs=1e-6) for a, b in logits)

    bad = {r["path"].split("/")[-1]: r for r in got if r["error"] is not None}
    assert set(bad) == set(BAD)
    for name, row in bad.items():
        assert row["error"].startswith(BAD[name]) and row["p_fake"] is None and row["label"] is None, row
    # a model whose output depends on the image (on a CPU with native bf16 the run computes in bf16, whose 8-bit
    # mantissa puts this weak model's 200 logits on a few dozen values: 55 on an AMX Xeon, all distinct in fp32)
    assert len({r["label"] for r in got} - {None}) >= 1 and len({r["p_fake"] for r in got}) > 20


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(RealfakeError) as e:
        require_ray()
    assert str(e.value) == MISSING_RAY
    assert "pip install 'ray[data]>=2.10'" in MISSING_RAY  # Ray Data alone: what the engine needs, nothing more
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path), "--engine", "ray",
                                   "--out", str(tmp_path / "rows.parquet")])
    assert res.exit_code == 1 and res.output == f"error: {MISSING_RAY}\n"
    assert not (tmp_path / "rows.parquet").exists()


@pytest.mark.parametrize(("args", "says"), [
    (["--engine", "ray"], "--engine ray writes its rows to a file: add --out results.parquet"),
    (["--engine", "spark", "--out", "x.parquet"], "--engine must be local or ray; got 'spark'"),
    (["--engine", "ray", "--out", "x.txt"], "name a .parquet, .jsonl or .csv file"),
    (["--actors", "2"], "--address and --actors are for --engine ray"),
    (["--engine", "ray", "--decode-workers", "2", "--out", "x.jsonl"],
     "--explain and --decode-workers are for --engine local"),
])
def test_engine_options_are_checked_in_one_line(tmp_path, args, says):
    res = CliRunner().invoke(app, ["predict", str(tmp_path), str(tmp_path), *args])
    assert res.exit_code == 1 and res.output.startswith("error: ") and says in res.output, res.output
    assert res.output.count("\n") == 1


def test_actor_plan_follows_the_cluster():
    assert Plan.for_cluster({"CPU": 2.0}, None) == Plan(2, 0)  # no GPU: one actor per CPU
    assert Plan.for_cluster({"CPU": 16.0, "GPU": 4.0}, None) == Plan(4, 1)  # one per GPU, each holding one
    assert Plan.for_cluster({"CPU": 3.0, "GPU": 4.0}, None) == Plan(2, 1)  # decoding keeps a CPU
    assert Plan.for_cluster({"CPU": 8.0}, 3) == Plan(3, 0)
    with pytest.raises(RealfakeError, match="--actors 3: the cluster has 2 CPU"):
        Plan.for_cluster({"CPU": 2.0}, 3)
    with pytest.raises(RealfakeError, match="--actors 3: the cluster has 2 GPU"):
        Plan.for_cluster({"CPU": 8.0, "GPU": 2.0}, 3)


def test_uris_are_listed_like_folders_and_read_with_the_same_reasons(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "e/c.webp", "notes.txt", ".hidden.png"):
        (tmp_path / "d" / name).write_bytes(b"x")
    uri = (tmp_path / "d").as_uri()
    assert [r.name for r in list_sources([uri])] == [f"{uri}/a.JPG", f"{uri}/b.png", f"{uri}/e/c.webp"]
    gone = list_sources([f"{uri}/gone.png"])
    assert gone == [UriRef(f"{uri}/gone.png", f"{uri}/gone.png", str(tmp_path / "d" / "gone.png"))]
    with pytest.raises(RealfakeError, match="cannot list nope://x"):
        list_sources(["nope://x"])
    refs = list_sources([f"{uri}/b.png", f"{uri}/gone.png", str(tmp_path / "d" / "b.png")])
    row = decode_row(_batch_row(0, refs))  # what a Ray task does with a batch, run here
    assert row["errors"][0] == row["errors"][2] == "not an image" and row["images"] == b""
    assert row["errors"][1].startswith("unreadable file (FileNotFoundError")


def test_a_remote_failure_is_told_in_its_own_last_line():
    remote = RuntimeError("The actor died because of an error raised in its creation task\n  File x, line 1\n"
                          "realfake.errors.RealfakeError: /runs/x is not a trained run (needs config.yaml)\n")
    assert _first_line(remote) == "/runs/x is not a trained run (needs config.yaml)"
    assert _first_line(ValueError("")) == "ValueError"
