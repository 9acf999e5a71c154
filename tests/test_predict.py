import zipfile

import numpy as np
import pytest
from PIL import Image

from realfake.data.inputs import InputRef, expand_inputs
from realfake.detector import Detector
from realfake.predict import predict_paths


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
    # the OOD score is steeper than p_fake, so the float noise of another batch size can move its last digit
    assert [{**p.to_dict(), "ood": None} for p in one_batch] == [{**p.to_dict(), "ood": None} for p in many_batches]
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
