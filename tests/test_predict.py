import csv
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from realfake.calibration import Calibration, Typicality
from realfake.data.inputs import InputRef, expand_inputs
from realfake.detector import Detector, PredictionBatch
from realfake.infer import TorchBackend
from realfake.predict import CSV_FIELDS, predict_batches, predict_paths, write_rows


@pytest.fixture(scope="module")
def detector(trained_run):
    return Detector.load(trained_run, device="cpu")


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "d" / f"{i}.png")
    Image.new("L", (64, 48), 90).save(tmp_path / "d" / "sub" / "gray.JPG")
    (tmp_path / "d" / "notes.txt").write_text("skipped: not an image name")
    (tmp_path / "d" / ".hidden.png").write_bytes(b"skipped: hidden")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.write(tmp_path / "d" / "0.png", "in/zero.png")
        zf.writestr("in/broken.png", b"\x89PNG\r\n\x1a\n broken")
        zf.writestr("readme.md", "ignored")
    return tmp_path


def test_expand_files_folders_globs_zips(tree):
    names = [r.name for r in expand_inputs([tree / "d", str(tree / "d" / "[01].png"), tree / "a.zip"])]
    d = str(tree / "d")
    assert names == [f"{d}/0.png", f"{d}/1.png", f"{d}/2.png", f"{d}/3.png", f"{d}/4.png", f"{d}/sub/gray.JPG",
                     f"{d}/0.png", f"{d}/1.png", f"{tree}/a.zip::in/broken.png", f"{tree}/a.zip::in/zero.png"]
    # a name that matches nothing is kept, so that it is reported rather than silently dropped
    assert [r.name for r in expand_inputs([tree / "nope.png", str(tree / "*.webp")])] == [
        str(tree / "nope.png"), str(tree / "*.webp")]


def test_stream_matches_detector_and_reports_bad_items_in_order(tree, detector):
    inputs = [tree / "d", tree / "missing.png", tree / "a.zip"]
    one_batch = list(predict_paths(detector, inputs, batch_size=1000, progress=False))
    many_batches = list(predict_paths(detector, inputs, batch_size=2, workers=2, progress=False))
    # the OOD score is steeper than p_fake, so the float noise of another batch size can move its last digit; the
    # log-odds are written in full, so that noise shows in their last digits
    def rounded(p):
        return {**p.to_dict(), "ood": None, "logit": None}

    assert [rounded(p) for p in one_batch] == [rounded(p) for p in many_batches]
    assert all(p.logit == pytest.approx(q.logit, rel=1e-5, abs=1e-6)
               for p, q in zip(one_batch, many_batches, strict=True) if p.logit is not None)
    assert max(abs(p.ood - q.ood) for p, q in zip(one_batch, many_batches, strict=True) if p.ood is not None) <= 1e-3
    by_name = {p.source.replace(f"{tree}/", "").replace("d/", ""): p for p in one_batch}
    assert len(one_batch) == 9
    assert by_name["missing.png"].error.startswith("unreadable file (FileNotFoundError")
    assert by_name["a.zip::in/broken.png"].error == "not an image"
    direct = detector.predict(str(tree / "d" / "3.png"))
    assert by_name["3.png"].p_fake == direct.p_fake and by_name["3.png"].label == direct.label
    assert by_name["a.zip::in/zero.png"].p_fake == by_name["0.png"].p_fake


def test_threshold_override_changes_labels(tree, detector):
    low = list(predict_paths(detector, [tree / "d"], threshold=1e-9, progress=False))
    high = list(predict_paths(detector, [tree / "d"], threshold=1 - 1e-9, progress=False))
    # nothing on the other side of the override; the OOD score may call some of them uncertain
    assert {p.label for p in low} <= {"FAKE", "uncertain"} and "FAKE" in {p.label for p in low}
    assert {p.label for p in high} <= {"REAL", "uncertain"} and "REAL" in {p.label for p in high}
    assert all(p.threshold == 1e-9 for p in low)


def test_input_ref_name():
    assert InputRef("x.zip", "a/b.png").name == "x.zip::a/b.png" and InputRef("y.png").name == "y.png"


# --- the pipeline: overlap keeps order, error rows and results; rows written from arrays match Predictions' ----


class _Tiny(torch.nn.Module):
    """A model that costs nothing, with logits spread wide enough to give every label."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv((x - 0.5) * 8).mean((2, 3))).squeeze(1) * 20 + 4.2


@pytest.fixture(scope="module")
def tiny_detector():
    ood = Typicality(tuple(np.linspace(-3, 1, 11)), tuple(np.linspace(-1, 3, 11)), 0.9)
    cal = Calibration(temperature=1.3, threshold=0.5, uncertain_band=(0.4, 0.45), tta="flip", ood=ood)
    return Detector(TorchBackend(_Tiny(), torch.device("cpu"), "flip"), cal)


@pytest.fixture
def mixed(tmp_path):
    """18 inputs: good images of several sizes and formats, and bad ones of every kind, interleaved."""
    rng = np.random.default_rng(1)
    d = tmp_path / "mixed"
    d.mkdir()
    for i in range(12):
        size = (32, 32) if i % 3 else (40 + i, 50)
        img = Image.fromarray(np.clip(rng.normal(20 * i, 30, (*size, 3)), 0, 255).astype(np.uint8))
        img.save(d / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    (d / "00b-empty.jpg").write_bytes(b"")  # in the first batch, which is split between the workers
    (d / "05b-text.png").write_text("not an image")
    (d / "08b-cut.jpg").write_bytes((d / "08.jpg").read_bytes()[:60])
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.write(d / "01.png", "ok.png")
        zf.writestr("broken.png", b"\x89PNG\r\n\x1a\n broken")
    return [d, tmp_path / "missing.jpg", tmp_path / "z.zip"]


BAD = {"00b-empty.jpg": "empty file", "05b-text.png": "not an image", "08b-cut.jpg": "unreadable image",
       "missing.jpg": "unreadable file (FileNotFoundError", "z.zip::broken.png": "not an image"}


def test_pipeline_keeps_order_error_rows_and_results_under_overlap(mixed, tiny_detector):
    names = [r.name for r in expand_inputs(mixed)]
    assert len(names) == 18
    stages: dict[str, float] = {}
    # batch 4 < 18 inputs: five batches, decoded ahead by two workers while the model runs
    overlapped = list(predict_paths(tiny_detector, mixed, batch_size=4, workers=2, progress=False))
    sequential = list(predict_paths(tiny_detector, mixed, batch_size=4, workers=0, progress=False))
    batches = list(predict_batches(tiny_detector, mixed, batch_size=4, workers=2, progress=False, stages=stages))
    assert [p.source for p in overlapped] == names  # one result per input, in input order
    assert [p.to_dict() for p in overlapped] == [p.to_dict() for p in sequential]
    assert [p.to_dict() for b in batches for p in b.predictions()] == [p.to_dict() for p in sequential]
    assert [len(b) for b in batches] == [4, 4, 4, 4, 2]
    assert {"list", "wait for the first batch", "wait for decoding", "model", "verdicts"} <= stages.keys()
    bad = [p for p in overlapped if p.source.rsplit("/", 1)[-1] in BAD]
    assert len(bad) == len(BAD)
    for p in bad:
        assert p.p_fake is None and p.label is None and p.ood is None
        assert p.error.startswith(BAD[p.source.rsplit("/", 1)[-1]]), p
    # each readable image is what the Detector says of it in one call of its own (float noise only)
    good = [p for p in overlapped if p not in bad]
    direct = tiny_detector.predict([p.source.replace("z.zip::ok.png", "mixed/01.png") for p in good])
    for p, q in zip(good, direct, strict=True):
        assert p.error is None and abs(p.p_fake - q.p_fake) <= 2e-6 and p.label == q.label, (p, q)
    assert len({p.label for p in good}) >= 2  # the labels compared above are not all alike


def _rows_the_old_way(preds, fmt):
    """What write_rows wrote per Prediction before rows were formatted from arrays (json.dumps, DictWriter)."""
    out = io.StringIO()
    rows = [{"path": p.source, **{k: v for k, v in p.to_dict().items() if k != "source"}} for p in preds]
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    rows = [{**r, "crop": ",".join(map(str, r["crop"])) if r["crop"] else None} for r in rows]  # one CSV cell
    w = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("with_ood", [True, False])
def test_rows_from_arrays_are_byte_for_byte_those_of_predictions(fmt, with_ood):
    rng = np.random.default_rng(2)
    names = ['a "quoted", name.jpg', "ünïcode/ß.png", "new\nline.png", "tab\there.jpg", "x.zip::m/1.png"] * 3
    errors = [None if i % 4 else f"reason {i}, with \"quotes\"" for i in range(len(names))]
    read = np.array([e is None for e in errors])
    p = np.where(read, rng.random(len(names)), np.nan)
    p[1] = 1e-9  # a float json writes in exponent form
    ood = np.where(read, rng.random(len(names)), np.nan) if with_ood else None
    labels = [None if e else ["REAL", "FAKE", "uncertain"][i % 3] for i, e in enumerate(errors)]
    # regions: 32x32 inputs, and large ones whose rows carry a note; the second batch has none (arrays as given)
    regions = np.array([(32, 32, 0, 0, 32, 32) if i % 2 else (4000, 3000, 500, 0, 3500, 3000)
                        for i in range(len(names))], dtype=np.int32)
    batches = [PredictionBatch(names[:7], p[:7], labels[:7], 0.4321, errors[:7], None if ood is None else ood[:7],
                               regions=regions[:7]),
               PredictionBatch(names[7:], p[7:], labels[7:], 0.4321, errors[7:], None if ood is None else ood[7:])]
    preds = [q for b in batches for q in b.predictions()]
    fast, slow = io.StringIO(newline=""), io.StringIO(newline="")
    assert write_rows(batches, fmt, fast) == (len(names), int(read.sum()))
    assert write_rows(preds, fmt, slow) == (len(names), int(read.sum()))
    assert fast.getvalue() == slow.getvalue() == _rows_the_old_way(preds, fmt)


def test_a_write_error_reaches_the_caller_and_nothing_hangs():
    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    batch = PredictionBatch(["a"], np.array([0.5]), ["FAKE"], 0.5, [None])
    with pytest.raises(BrokenPipeError):
        write_rows([batch] * 50, "jsonl", Closed())  # more results than the writer's queue holds


def test_vectorised_labels_are_label_of_each():
    ood = Typicality(tuple(np.linspace(-3, 1, 11)), tuple(np.linspace(-1, 3, 11)), 0.9)
    cal = Calibration(temperature=1.0, threshold=0.5, uncertain_band=(0.4, 0.45), ood=ood)
    p = np.concatenate([np.random.default_rng(3).random(500), [0.4, 0.45, 0.5, np.nextafter(0.5, 0), np.nan]])
    o = np.random.default_rng(4).random(len(p))
    o[::7] = 0.9  # exactly at the level: not out of distribution
    assert cal.labels(p, o) == [cal.label(float(a), float(b)) for a, b in zip(p, o, strict=True)]
    assert cal.labels(p) == [cal.label(float(a)) for a in p]
    assert {"REAL", "FAKE", "uncertain"} <= set(cal.labels(p, o))


# --- rows to a file (--out): the printed rows byte for byte, or Parquet with the same values; atomic -------------


def _batches_for_files(with_ood: bool = True) -> list[PredictionBatch]:
    rng = np.random.default_rng(5)
    names = ["a.jpg", 'q "uoted", ü.png', "x.zip::m/1.png", "gone.jpg", "b.jpg"]
    errors = [None, None, None, "unreadable file (FileNotFoundError: No such file or directory)", None]
    read = np.array([e is None for e in errors])
    p = np.where(read, rng.random(len(names)), np.nan)
    ood = np.where(read, rng.random(len(names)), np.nan) if with_ood else None
    labels = [None if e else lab for e, lab in zip(errors, ["REAL", "FAKE", "uncertain", None, "FAKE"], strict=True)]
    reasons = [None, None, "ood", None, None]
    z = np.log(p / (1 - p))
    regions = np.array([(400, 300, 50, 0, 350, 300), (32, 32, 0, 0, 32, 32), (64, 48, 8, 0, 56, 48), (-1,) * 6,
                        (4000, 3000, 500, 0, 3500, 3000)], dtype=np.int32)
    return [PredictionBatch(names[:2], p[:2], labels[:2], 0.47, errors[:2], None if ood is None else ood[:2],
                            z[:2], reasons[:2], regions[:2]),
            PredictionBatch(names[2:], p[2:], labels[2:], 0.47, errors[2:], None if ood is None else ood[2:],
                            z[2:], reasons[2:], regions[2:])]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_out_file_is_the_printed_rows(tmp_path, fmt):
    from realfake.predict import write_file

    printed = io.StringIO(newline="")
    write_rows(_batches_for_files(), fmt, printed)
    assert write_file(_batches_for_files(), tmp_path / f"rows.{fmt}") == (5, 4)
    assert (tmp_path / f"rows.{fmt}").read_bytes() == printed.getvalue().encode()


@pytest.mark.parametrize("with_ood", [True, False])
def test_out_parquet_has_the_json_rows_values(tmp_path, with_ood):
    pq = pytest.importorskip("pyarrow.parquet")
    from realfake.predict import write_file

    printed = io.StringIO()
    write_rows(_batches_for_files(with_ood), "jsonl", printed)
    assert write_file(_batches_for_files(with_ood), tmp_path / "rows.parquet") == (5, 4)
    table = pq.read_table(tmp_path / "rows.parquet")
    assert table.column_names == CSV_FIELDS
    written = ("p_fake", "logit", "label", "width", "height", "crop")  # null in JSON rather than left out
    as_json = [{k: v for k, v in row.items() if v is not None or k in written} for row in table.to_pylist()]
    assert as_json == [json.loads(line) for line in printed.getvalue().splitlines()]


def test_out_names_its_format_and_a_failed_run_leaves_no_file(tmp_path):
    from realfake.errors import RealfakeError
    from realfake.predict import write_file

    with pytest.raises(RealfakeError, match=r"--out .*rows\.txt: name a \.parquet, \.jsonl or \.csv file"):
        write_file(_batches_for_files(), tmp_path / "rows.txt")

    def failing():
        yield from _batches_for_files()
        raise RuntimeError("the model fell over")

    (tmp_path / "old.jsonl").write_text("old rows\n")
    for name in ("old.jsonl", "new.csv", "new.parquet"):
        with pytest.raises(RuntimeError, match="fell over"):
            write_file(failing(), tmp_path / name)
    assert (tmp_path / "old.jsonl").read_text() == "old rows\n"  # the previous file stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.jsonl"]  # no half file, no temporary


# --- `--out` is checked before any work: never the run's own files, never a folder, a place that can be written ---


def _symlink(link, target):
    link.symlink_to(target, target_is_directory=True)
    return link


def _folder(path):
    path.mkdir(parents=True)
    return path


def _file(path):
    path.write_text("in the way")
    return path


OUT_REFUSED = {  # (the run folder's name, --out from it, what the one line says)
    "the run's predictions.csv": ("run", lambda run: run / "predictions.csv", "is in the run folder"),
    "deeper in the run": ("run", lambda run: run / "evaluations" / "x" / "rows.jsonl", "is in the run folder"),
    "the run by another path": ("run", lambda run: run.parent / "elsewhere" / ".." / "run" / "rows.csv",
                                "is in the run folder"),
    "the run through a symlinked folder": ("run", lambda run: _symlink(run.parent / "alias", run) / "predictions.csv",
                                           "is in the run folder"),
    "the run folder itself": ("run.jsonl", lambda run: run, "is in the run folder"),
    "an existing folder": ("run", lambda run: _folder(run.parent / "rows.jsonl"), "is a folder: name a file in it"),
    "a file in the way of its folder": ("run", lambda run: _file(run.parent / "blocker") / "rows.parquet",
                                        "a file is in the way"),
}


@pytest.mark.parametrize("case", OUT_REFUSED, ids=list(OUT_REFUSED))
def test_predict_refuses_a_harmful_or_failing_out_before_any_work(case, tmp_path, monkeypatch):
    from tests.clitools import cli_inline

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(Detector, "load", never)
    name, make_out, message = OUT_REFUSED[case]
    run = tmp_path / name
    run.mkdir()
    (run / "predictions.csv").write_text("path,label,p_fake\na.png,REAL,0.1\n")
    (run / "run.json").write_text('{"status": "trained"}')
    before = {p: p.read_bytes() for p in run.rglob("*")}
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "img.png")
    out = make_out(run)

    proc = cli_inline("predict", run, tmp_path / "img.png", "--decode-workers", 2, "--out", out)
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: --out {out} ") or line.startswith(f"error: could not write {out} "), line
    assert message in line
    assert {p: p.read_bytes() for p in run.rglob("*")} == before  # nothing replaced, nothing added


def test_write_file_refuses_a_folder_before_taking_a_batch(tmp_path):
    from realfake.errors import RealfakeError
    from realfake.predict import write_file

    def batches():
        raise AssertionError("a batch was asked for")
        yield

    (tmp_path / "rows.csv").mkdir()
    with pytest.raises(RealfakeError, match="is a folder"):
        write_file(batches(), tmp_path / "rows.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]  # no temporary beside it


def test_predict_out_into_a_real_run_leaves_its_predictions_for_report(trained_run, tmp_path):
    import os
    import shutil

    from tests.clitools import assert_one_line_error, cli_inline

    run = tmp_path / "run"  # a copy of links: a write replaces a name in it, never the shared run's files
    shutil.copytree(trained_run, run, copy_function=os.link)
    before = (run / "predictions.csv").read_bytes()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "img.png")
    proc = cli_inline("predict", run, tmp_path / "img.png", "--device", "cpu", "--out", run / "predictions.csv")
    assert_one_line_error(proc, f"--out {run / 'predictions.csv'} is in the run folder {run}")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (run / "predictions.csv").read_bytes() == before
