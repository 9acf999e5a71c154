"""What was judged: every prediction row carries the input's size, the square that was judged, and a note when
shrinking that square to the model's 32x32 lost the fine detail (issue 27), in JSON lines, CSV and Parquet alike."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from realfake.contract import IMAGE_SIZE
from realfake.data.images import Region, read_and_decode, read_and_decode_region, to_model_array
from realfake.detector import Detector
from realfake.predict import predict_batches, predict_paths, write_file, write_rows

BIG_NOTE = ("reduced 9.4x to 32x32 (centre 300x300 of 400x300): generator traces at the original resolution "
            "are lost")


@pytest.fixture(scope="module")
def detector(trained_run: Path) -> Detector:
    return Detector.load(trained_run, device="cpu")


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    """A 400x300 PNG (judged on its centre 300x300, shrunk 9.4x), a 32x32 one (judged whole) and a text file."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "bad.png").write_text("not an image")
    return [tmp_path / "big.png", tmp_path / "small.png", tmp_path / "bad.png"]


def test_the_decoder_says_what_it_judged_and_its_pixels_are_unchanged(inputs: list[Path]) -> None:
    big, small, _ = inputs
    image, region = read_and_decode_region(big)
    assert region == Region(400, 300, 50, 0, 350, 300)
    assert np.array_equal(image, read_and_decode(big))  # the same pixels as the decoder without the region
    with Image.open(big) as img:  # and they are the centre square, shrunk
        assert np.array_equal(image, to_model_array(img.crop((50, 0, 350, 300))))
    assert region.note() == BIG_NOTE
    assert read_and_decode_region(small)[1] == Region.whole() == Region(32, 32, 0, 0, 32, 32)
    assert Region.whole().note() is None


def test_the_note_names_the_reduction_and_the_crop() -> None:
    assert Region(4000, 3000, 500, 0, 3500, 3000).note() == (
        "reduced 94x to 32x32 (centre 3000x3000 of 4000x3000): generator traces at the original resolution are lost")
    assert Region(200, 200, 0, 0, 200, 200).note() == (
        "reduced 6.2x to 32x32 (whole 200x200): generator traces at the original resolution are lost")
    side = 4 * IMAGE_SIZE  # exactly 4x: no note; one pixel more: a note
    assert Region(side, side, 0, 0, side, side).note() is None
    assert Region(side + 1, side + 1, 0, 0, side + 1, side + 1).note() is not None


def test_exif_rotation_comes_first(tmp_path: Path) -> None:
    """A 400x300 JPEG whose EXIF says 'rotate 90' is a 300x400 picture: its size and crop are the upright one's."""
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert read_and_decode_region(tmp_path / "rotated.jpg")[1] == Region(300, 400, 0, 50, 300, 350)


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "worker-processes"])
def test_jsonl_rows_carry_size_crop_and_note(detector: Detector, inputs: list[Path], workers: int) -> None:
    # batch 1: three batches, so with workers the regions come back from the worker processes
    batches = predict_batches(detector, inputs, batch_size=1, workers=workers, progress=False)
    out = io.StringIO()
    assert write_rows(batches, "jsonl", out) == (3, 2)
    big, small, bad = (json.loads(line) for line in out.getvalue().splitlines())
    assert (big["width"], big["height"], big["crop"], big["note"]) == (400, 300, [50, 0, 350, 300], BIG_NOTE)
    assert (small["width"], small["height"], small["crop"]) == (32, 32, [0, 0, 32, 32])
    assert "note" not in small  # judged whole, unreduced: nothing to say
    assert bad["error"] == "not an image"
    assert bad["width"] is None and bad["height"] is None and bad["crop"] is None and "note" not in bad
    assert bad["p_fake"] is None and bad["label"] is None


def test_csv_rows_carry_size_crop_and_note(detector: Detector, inputs: list[Path]) -> None:
    out = io.StringIO(newline="")
    write_rows(predict_batches(detector, inputs, workers=0, progress=False), "csv", out)
    big, small, bad = csv.DictReader(io.StringIO(out.getvalue()))
    assert (big["width"], big["height"], big["crop"], big["note"]) == ("400", "300", "50,0,350,300", BIG_NOTE)
    assert (small["width"], small["height"], small["crop"], small["note"]) == ("32", "32", "0,0,32,32", "")
    assert (bad["width"], bad["height"], bad["crop"], bad["note"], bad["p_fake"]) == ("", "", "", "", "")
    assert bad["error"] == "not an image"


def test_parquet_rows_carry_size_crop_and_note(detector: Detector, inputs: list[Path], tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "rows.parquet"
    assert write_file(predict_batches(detector, inputs, workers=0, progress=False), out) == (3, 2)
    table = pq.read_table(out)
    assert table.schema.field("crop").type == pa.list_(pa.int32())
    assert table.schema.field("width").type == table.schema.field("height").type == pa.int32()
    big, small, bad = table.to_pylist()
    assert (big["width"], big["height"], big["crop"], big["note"]) == (400, 300, [50, 0, 350, 300], BIG_NOTE)
    assert (small["width"], small["height"], small["crop"], small["note"]) == (32, 32, [0, 0, 32, 32], None)
    assert (bad["width"], bad["height"], bad["crop"], bad["note"]) == (None, None, None, None)


def test_every_door_gives_the_same_region(detector: Detector, inputs: list[Path]) -> None:
    """Detector.predict (a path, bytes, a PIL image, an array) and predict_paths agree on what was judged."""
    big = inputs[0]
    with Image.open(big) as img:
        pil = img.copy()
    doors = [detector.predict(big), detector.predict(big.read_bytes()), detector.predict(pil),
             detector.predict(np.asarray(pil)), next(iter(predict_paths(detector, [big], progress=False)))]
    for p in doors:
        assert (p.width, p.height, p.crop, p.note) == (400, 300, [50, 0, 350, 300], BIG_NOTE), p
    bad = detector.predict(inputs[2])
    assert (bad.width, bad.height, bad.crop, bad.note) == (None, None, None, None)


def test_arrays_given_without_their_regions_leave_them_null(detector: Detector) -> None:
    """predict_batch on model-form arrays does not know what they were cut from: it says nothing rather than
    guessing; given the regions, the rows carry them."""
    images = np.zeros((2, 32, 32, 3), np.uint8)
    [a, _] = detector.predict_batch(["a", "b"], images, [None, None]).predictions()
    assert (a.width, a.height, a.crop, a.note) == (None, None, None, None)
    regions = [Region(4000, 3000, 500, 0, 3500, 3000), Region.whole()]
    a, b = detector.predict_batch(["a", "b"], images, [None, None], regions=regions).predictions()
    assert a.crop == [500, 0, 3500, 3000] and a.note.startswith("reduced 94x") and b.note is None
    with pytest.raises(ValueError, match="1 regions for 2 readable inputs"):
        detector.predict_batch(["a", "b"], images, [None, None], regions=regions[:1])
