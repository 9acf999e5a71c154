"""Folder walks (training's Source and predict's expand_inputs) finish on link loops, follow links only
inside the folder, and list links out of it as not read: one rule, one walker (realfake.data.walk)."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from realfake.data.cache import load_dataset
from realfake.data.images import BadImage
from realfake.data.inputs import InputReader, expand_inputs
from realfake.data.sources import open_source

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(os.name == "nt", reason="symlinks")]


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buf, "PNG")
    return buf.getvalue()


def write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def looped(tmp_path):
    """Two images, and links back to the folder itself and its ancestors from every level: before, the walk
    branched at each link and never ended (2 links per level, 40 levels deep)."""
    root = tmp_path / "looped"
    write(root / "REAL" / "a.png", png(10))
    write(root / "FAKE" / "sub" / "b.png", png(200))
    for d in (root / "REAL", root / "FAKE", root / "FAKE" / "sub"):
        os.symlink("..", d / "up")
        os.symlink(".", d / "here")
        os.symlink(root, d / "top")
    return root


def test_training_walk_ends_on_link_loops(looped):
    items = open_source(looped).items()
    assert [it.path for it in items] == ["FAKE/sub/b.png", "REAL/a.png"]  # each image once, under one name
    ds = load_dataset(looped, workers=1, progress=False)
    assert len(ds) == 2 and ds.labels.tolist() == [1, 0] and not ds.skipped


def test_predict_walk_ends_on_link_loops(looped):
    assert [r.path for r in expand_inputs([looped])] == [str(looped / "FAKE/sub/b.png"), str(looped / "REAL/a.png")]


def test_predict_recursive_glob_ends_on_link_loops(looped):
    # glob's own `**` follows every link: this pattern ran for hours before
    refs = list(expand_inputs([str(looped / "**" / "*.png")]))
    assert [r.path for r in refs] == [str(looped / "FAKE/sub/b.png"), str(looped / "REAL/a.png")]
    assert [r.path for r in expand_inputs([str(looped / "**")])] == [r.path for r in refs]


@pytest.fixture
def escaping(tmp_path):
    """Links out of the data folder (to a file, to a folder) and a link to a sibling folder inside it."""
    outside = tmp_path / "elsewhere"
    write(outside / "secret.png", png(99))
    write(outside / "more" / "c.png", png(98))
    root = tmp_path / "data"
    write(root / "REAL" / "a.png", png(10))
    write(root / "pool" / "gen1" / "p.png", png(150))
    (root / "FAKE").mkdir()
    os.symlink(outside / "secret.png", root / "REAL" / "evil.png")  # a file out of the folder
    os.symlink(outside / "more", root / "FAKE" / "ext")  # a folder out of it
    os.symlink("../pool/gen1", root / "FAKE" / "gen1")  # a folder inside it: followed
    os.symlink(outside / "gone.png", root / "REAL" / "broken.png")  # nothing there: left out, as ever
    return root


OUT = "not read: a link to a place outside the folder"


def test_training_follows_inside_links_and_lists_outside_ones(escaping):
    ds = load_dataset(escaping, workers=1, progress=False)
    assert ds.paths == ["FAKE/gen1/p.png", "REAL/a.png"]
    assert ds.skipped == [{"path": "FAKE/ext", "reason": OUT}, {"path": "REAL/evil.png", "reason": OUT}]
    assert 99 not in ds.images and 98 not in ds.images  # nothing from outside was decoded


def test_predict_applies_the_same_rule(escaping):
    refs = list(expand_inputs([escaping]))
    rel = {os.path.relpath(r.path, escaping): r.refused for r in refs}
    # pool/gen1 is the folder FAKE/gen1 links to, walked once, under the name found first
    assert rel == {"FAKE/ext": OUT, "FAKE/gen1/p.png": None, "REAL/a.png": None, "REAL/evil.png": OUT}
    with InputReader() as reader:
        for r in refs:
            if r.refused:
                with pytest.raises(BadImage, match="outside the folder"):
                    reader.read(r)
            else:
                assert reader.read(r).startswith(b"\x89PNG")
    # a pattern walks its fixed folder by the same rule
    globbed = {os.path.relpath(r.path, escaping): r.refused for r in expand_inputs([str(escaping / "**" / "*.png")])}
    assert globbed == {k: v for k, v in rel.items() if k.endswith(".png")}


def test_training_and_predict_see_the_same_files(looped, escaping):
    for root in (looped, escaping):
        train = {(it.path, it.refused) for it in open_source(root).items()}
        pred = {(os.path.relpath(r.path, root), r.refused) for r in expand_inputs([root])}
        assert train == {p for p in pred if p[0].split("/")[0] in ("REAL", "FAKE")}


def test_fifo_named_like_an_image_is_not_read(tmp_path):
    root = tmp_path / "data"
    write(root / "REAL" / "a.png", png(10))
    write(root / "FAKE" / "b.png", png(200))
    os.mkfifo(root / "FAKE" / "pipe.png")  # reading it would block forever
    assert [it.path for it in open_source(root).items()] == ["FAKE/b.png", "REAL/a.png"]
    assert len(list(expand_inputs([root]))) == 2
    with InputReader() as reader, pytest.raises(BadImage, match="not a regular file"):
        reader.read(next(iter(expand_inputs([root / "FAKE" / "pipe.png"]))))
