"""Finding labelled images in folders and zips."""

from __future__ import annotations

import zipfile
from collections import Counter

import pytest

from realfake.data.sources import Item, Source, bundled_sample, open_source, parse_item
from realfake.errors import RealfakeError

REAL, FAKE = 0, 1


@pytest.mark.parametrize(
    ("path", "label", "split", "source"),
    [
        ("train/REAL/0000 (1).jpg", REAL, "train", None),
        ("train/FAKE/0000 (1).jpg", FAKE, "train", None),
        ("test/REAL/12.jpg", REAL, "test", None),
        ("test/FAKE/12.jpg", FAKE, "test", None),
        ("REAL/a.png", REAL, None, None),
        ("FAKE/a.png", FAKE, None, None),
        ("cifake/train/REAL/a.jpg", REAL, "train", None),
        ("data/Train/real/a.jpg", REAL, "train", None),
        ("x/TEST/Fake/a.jpg", FAKE, "test", None),
        ("FAKE/sd14/a.png", FAKE, None, "sd14"),
        ("test/FAKE/midjourney/deep/er/a.png", FAKE, "test", "midjourney"),
        ("REAL/train/a.png", REAL, None, "train"),  # a split folder below the label is just a source
        ("test/other/REAL/a.png", REAL, "test", None),
        ("REAL/x/FAKE/a.png", FAKE, None, None),  # the deepest label folder wins
        ("FAKE/x/real/a.png", REAL, None, None),
        ("train/x/test/REAL/a.png", REAL, "test", None),  # the nearest split folder above the label
    ],
)
def test_parse_item(path, label, split, source):
    assert parse_item(path) == Item(path, label, split, source)


@pytest.mark.parametrize(
    "path",
    [
        "a.jpg",
        "REAL.jpg",
        "train/a.jpg",
        "train/other/a.jpg",
        "really/a.jpg",
        "fakes/a.jpg",
        "REAL/.DS_Store",
        "REAL/._a.jpg",
        ".hidden/REAL/a.jpg",
        "train/.cache/FAKE/a.jpg",
        "__MACOSX/train/REAL/._a.jpg",
        "__MACOSX/REAL/a.jpg",
    ],
)
def test_parse_item_ignores(path):
    assert parse_item(path) is None


TREE = {
    "train/REAL/0000 (1).jpg": b"r1",
    "train/REAL/0001 (1).jpg": b"r2",
    "train/FAKE/0000 (1).jpg": b"f1",
    "train/FAKE/sub/0001.jpg": b"f2",
    "test/REAL/5.jpg": b"r3",
    "test/FAKE/5.jpg": b"f3",
    "test/FAKE/.DS_Store": b"junk",
    "README.txt": b"hello",
    "train/notes.txt": b"hello",
    ".git/REAL/x.jpg": b"hidden",
}


def make_tree(root, files=TREE):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def make_zip(path, files=TREE, prefix="", dir_entries=True):
    with zipfile.ZipFile(path, "w") as zf:
        if dir_entries:
            dirs = sorted(
                {prefix + "/".join(r.split("/")[:i]) + "/" for r in files for i in range(1, r.count("/") + 1)}
            )
            for d in dirs:
                zf.writestr(d, b"")
        for rel, data in files.items():
            zf.writestr(prefix + rel, data)
        zf.writestr("__MACOSX/" + prefix + "train/REAL/._0000 (1).jpg", b"resource fork")
    return path


EXPECTED_PATHS = [
    "test/FAKE/5.jpg",
    "test/REAL/5.jpg",
    "train/FAKE/0000 (1).jpg",
    "train/FAKE/sub/0001.jpg",
    "train/REAL/0000 (1).jpg",
    "train/REAL/0001 (1).jpg",
]


def test_folder_items(tmp_path):
    src = open_source(make_tree(tmp_path / "data"))
    assert not src.is_zip
    items = src.items()
    assert [it.path for it in items] == EXPECTED_PATHS
    assert Counter(it.label for it in items) == {REAL: 3, FAKE: 3}
    assert Counter(it.split for it in items) == {"train": 4, "test": 2}
    assert next(it for it in items if it.path == "train/FAKE/sub/0001.jpg").source == "sub"


def test_folder_reader(tmp_path):
    src = open_source(make_tree(tmp_path / "data"))
    with src.open() as read:
        assert read("test/FAKE/5.jpg") == b"f3"


@pytest.mark.parametrize("dir_entries", [True, False])
def test_zip_gives_same_items_as_folder(tmp_path, dir_entries):
    folder = open_source(make_tree(tmp_path / "data"))
    zipped = open_source(make_zip(tmp_path / "data.zip", dir_entries=dir_entries))
    assert zipped.is_zip
    assert zipped.items() == folder.items()
    with zipped.open() as read_zip, folder.open() as read_dir:
        for it in folder.items():
            assert read_zip(it.path) == read_dir(it.path)


def test_zip_with_top_folder(tmp_path):
    src = open_source(make_zip(tmp_path / "data.zip", prefix="cifake/"))
    assert [it.path for it in src.items()] == ["cifake/" + p for p in EXPECTED_PATHS]
    assert Counter(it.split for it in src.items()) == {"train": 4, "test": 2}


def test_items_sorted_regardless_of_creation_order(tmp_path):
    files = {f"REAL/{n}.jpg": b"x" for n in ("b", "c", "a")} | {"FAKE/z.jpg": b"x", "FAKE/a.jpg": b"x"}
    items = open_source(make_tree(tmp_path / "d", files)).items()
    paths = [it.path for it in items]
    assert paths == sorted(paths)


def test_folder_without_label_folders(tmp_path):
    make_tree(tmp_path / "d", {"images/a.jpg": b"x", "b.jpg": b"y"})
    with pytest.raises(RealfakeError, match="REAL"):
        open_source(tmp_path / "d").items()


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RealfakeError):
        open_source(tmp_path / "empty").items()


def test_zip_without_label_folders(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images/a.jpg", b"x")
    with pytest.raises(RealfakeError):
        open_source(path).items()


def test_missing_path(tmp_path):
    with pytest.raises(RealfakeError, match="not found"):
        open_source(tmp_path / "nope")


def test_non_zip_file(tmp_path):
    p = tmp_path / "data.zip"
    p.write_text("I am not a zip")
    with pytest.raises(RealfakeError, match="neither a folder, a zip nor a CSV"):
        open_source(p)


def test_fingerprint_changes_with_folder_content(tmp_path):
    root = make_tree(tmp_path / "data")
    before = Source(root, "x").fingerprint()
    assert Source(root, "x").fingerprint() == before
    (root / "train/REAL/new.jpg").write_bytes(b"new")
    assert Source(root, "x").fingerprint() != before


def test_fingerprint_ignores_hidden_folders(tmp_path):
    root = make_tree(tmp_path / "data")
    before = Source(root, "x").fingerprint()
    (root / ".git" / "index").write_bytes(b"changed")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / ".ipynb_checkpoints" / "x.jpg").write_bytes(b"x")
    assert Source(root, "x").fingerprint() == before


def test_bundled_sample():
    assert bundled_sample().is_file()
    src = open_source(None)
    items = src.items()
    assert len(items) == 2000
    assert Counter(it.label for it in items) == {REAL: 1000, FAKE: 1000}
