import numpy as np
import pytest
from PIL import Image

from realfake.data.cache import load_dataset
from realfake.data.sources import open_source
from realfake.errors import RealfakeError


@pytest.fixture
def csv_set(tmp_path):
    (tmp_path / "imgs" / "x").mkdir(parents=True)
    rows = ["path,label,source"]
    for i, (label, source, color) in enumerate([("REAL", "camera", 10), ("real", "camera", 20), ("FAKE", "genA", 200),
                                                ("1", "genB", 220), ("0", "", 30)]):
        Image.new("RGB", (32, 32), (color, color, color)).save(tmp_path / "imgs" / "x" / f"{i}.png")
        rows.append(f"imgs/x/{i}.png,{label},{source}")
    (tmp_path / "set.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "set.csv"


def test_csv_lists_items_with_labels_and_sources(csv_set):
    items = open_source(csv_set).items()
    assert [(it.path, it.label, it.source) for it in items] == [
        ("imgs/x/0.png", 0, "camera"), ("imgs/x/1.png", 0, "camera"), ("imgs/x/2.png", 1, "genA"),
        ("imgs/x/3.png", 1, "genB"), ("imgs/x/4.png", 0, None)]


def test_csv_decodes_relative_to_its_folder_and_caches(csv_set):
    ds = load_dataset(csv_set, progress=False)
    assert len(ds) == 5 and ds.labels.tolist() == [0, 0, 1, 1, 0]
    assert ds.images[2].mean() == pytest.approx(200, abs=1) and ds.sources[3] == "genB"
    assert load_dataset(csv_set, progress=False).from_cache
    # changing a listed image changes the data's identity, so the cache is not reused
    Image.new("RGB", (32, 32), (0, 0, 0)).save(csv_set.parent / "imgs" / "x" / "2.png")
    fresh = load_dataset(csv_set, progress=False)
    assert not fresh.from_cache and np.all(fresh.images[2] == 0)


def test_csv_missing_file_is_skipped_and_reported(csv_set):
    csv_set.write_text(csv_set.read_text() + "imgs/x/nope.png,FAKE,genA\n")
    ds = load_dataset(csv_set, progress=False)
    assert len(ds) == 5 and ds.report()["skipped"][0]["path"] == "imgs/x/nope.png"


@pytest.mark.parametrize(("text", "message"), [
    ("file,label\na.png,REAL\n", "columns path,label"),
    ("path,label\na.png,maybe\n", "line 2: label must be"),
    ("path,label,split\na.png,REAL,val\n", "split must be train or test"),
])
def test_bad_csv_is_a_clear_error(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(RealfakeError, match=message):
        open_source(tmp_path / "bad.csv").items()
