"""The generator zoo at tiny scale: every family trains a few steps on REAL images and samples JPEG q75 files in
the per-family layout; weights are safetensors with a checked header and repeat byte for byte from a seed."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as st_save
from typer.testing import CliRunner

from realfake.cli import app
from realfake.data.sources import open_source
from realfake.errors import RealfakeError
from realfake.zoo.families import FAMILIES, parameter_count
from realfake.zoo.sample import MARKER, write_samples
from realfake.zoo.train import TRAIN_LOG, real_images, train_generator
from realfake.zoo.weights import WEIGHTS_FILE, load_generator

runner = CliRunner()


@pytest.fixture(scope="module")
def real64() -> np.ndarray:
    """64 REAL images: the mini stand-in's train/REAL when it is there, else smooth random pictures."""
    from tests.conftest import MINI_ZIP

    if MINI_ZIP.is_file():
        return real_images(MINI_ZIP, limit=64, seed=0)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    return np.ascontiguousarray(small.repeat(4, axis=1).repeat(4, axis=2))


def _q75_tables() -> dict[int, list[int]]:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="JPEG", quality=75)
    return Image.open(buf).quantization


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_trains_and_samples_jpeg_q75_per_family(family: str, real64: np.ndarray, tmp_path: Path) -> None:
    tiny = {"timesteps": 8} if family == "ddpm" else None  # 8 denoising steps keep sampling to a second
    weights = train_generator(real64, family, tmp_path / "g", seed=0, steps=2, batch_size=8, settings=tiny)
    assert weights.name == WEIGHTS_FILE
    assert load_generator(weights)[1].settings == {**FAMILIES[family].settings, **(tiny or {})}
    log = json.loads((tmp_path / "g" / TRAIN_LOG).read_text())
    assert log["n_real_images"] == 64 and log["steps"] == 2 and all(np.isfinite(list(log["last_losses"].values())))
    net, info = load_generator(tmp_path / "g")
    assert parameter_count(net) * 2 < 3 * 2**20  # fp16 weights under 3 MiB, to ship in the package later
    write_samples(tmp_path / "g", 5, tmp_path / "s", seed=0)
    files = sorted((tmp_path / "s" / "FAKE" / family).iterdir())
    assert [f.name for f in files] == [f"{i:06d}.jpg" for i in range(5)]
    tables = _q75_tables()
    for f in files:
        im = Image.open(f)
        assert (im.format, im.size, im.mode) == ("JPEG", (32, 32), "RGB")
        assert im.quantization == tables
    # the project's own loader reads them as FAKE images of source <family>
    items = open_source(tmp_path / "s").items()
    assert {(it.label, it.source) for it in items} == {(1, family)} and len(items) == 5


@pytest.mark.parametrize("family", ["gan-transposed", "ddpm"])
def test_same_seed_same_data_gives_byte_identical_weights(family: str, real64: np.ndarray, tmp_path: Path) -> None:
    a = train_generator(real64, family, tmp_path / "a", seed=3, steps=2, batch_size=4).read_bytes()
    b = train_generator(real64, family, tmp_path / "b", seed=3, steps=2, batch_size=4).read_bytes()
    c = train_generator(real64, family, tmp_path / "c", seed=4, steps=2, batch_size=4).read_bytes()
    with pytest.raises(RealfakeError, match="has no setting"):
        train_generator(real64, family, tmp_path / "d", settings={"widht": 8})
    assert a == b
    assert a != c


def test_training_leaves_the_host_random_state_alone(real64: np.ndarray, tmp_path: Path) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train_generator(real64, "vae", tmp_path / "v", seed=0, steps=1, batch_size=4)
    assert torch.equal(before, torch.get_rng_state())


def test_metadata_round_trip(real64: np.ndarray, tmp_path: Path) -> None:
    train_generator(real64, "gan-subpixel", tmp_path / "g", seed=7, steps=2, batch_size=4)
    _, info = load_generator(tmp_path / "g" / WEIGHTS_FILE)
    assert (info.family, info.seed, info.steps, info.batch_size, info.n_real_images) == ("gan-subpixel", 7, 2, 4, 64)
    assert info.settings == FAMILIES["gan-subpixel"].settings
    assert info.realfake_version
    assert all(isinstance(v, str) for v in info.metadata().values())


def _bad(tmp_path: Path, meta: dict[str, str] | None, family: str = "vae") -> Path:
    state = FAMILIES[family].generator().state_dict()
    path = tmp_path / f"bad-{len(list(tmp_path.iterdir()))}.safetensors"
    path.write_bytes(st_save({k: v.contiguous() for k, v in state.items()}, metadata=meta))
    return path


def test_bad_weights_are_refused_in_one_line(real64: np.ndarray, tmp_path: Path) -> None:
    train_generator(real64, "vae", tmp_path / "g", seed=0, steps=1, batch_size=4)
    good, _ = load_generator(tmp_path / "g")
    from realfake.zoo.weights import _header_metadata

    meta = _header_metadata((tmp_path / "g" / WEIGHTS_FILE).read_bytes())
    assert meta is not None
    cases = {
        "not a realfake zoo generator": _bad(tmp_path, None),
        "unknown generator family 'nope'": _bad(tmp_path, {**meta, "family": "nope"}),
        "malformed zoo header": _bad(tmp_path, {**meta, "settings": "{not json"}),
        "malformed zoo header ": _bad(tmp_path, {k: v for k, v in meta.items() if k != "seed"}),
        "do not fit family 'vae'": _bad(tmp_path, meta, family="gan-bilinear"),
        "not a readable safetensors file": tmp_path / "junk.safetensors",
        "cannot read": tmp_path / "missing.safetensors",
    }
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{nope")
    for expected, path in cases.items():
        with pytest.raises(RealfakeError) as e:
            load_generator(path)
        assert expected.strip() in str(e.value) and "\n" not in str(e.value), (expected, str(e.value))


def _real_fake_folder(root: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        (root / "REAL").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "REAL" / f"{i}.jpg",
                                                                              quality=75)
        (root / "FAKE").mkdir(exist_ok=True)
        (root / "FAKE" / f"{i}.jpg").write_bytes(b"garbage, not an image" * 3)
    return root


def test_the_zoo_never_reads_fake_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import realfake.data.sources as sources

    read: list[str] = []
    original = sources.read_file
    monkeypatch.setattr(sources, "read_file", lambda p, *a, **k: read.append(str(p)) or original(p, *a, **k))
    data = _real_fake_folder(tmp_path / "data")
    result = runner.invoke(app, ["zoo", "train", "--real", str(data), "--family", "gan-bilinear", "--steps", "2",
                                 "--batch-size", "4", "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert len(read) == 12 and all("/REAL/" in p for p in read)
    _, info = load_generator(tmp_path / "g")
    assert info.n_real_images == 12


def test_cli_train_and_sample_collects_families_in_one_zip(mini_zip: Path, tmp_path: Path) -> None:
    out_zip = tmp_path / "zoo.zip"
    for family in ("gan-nearest", "vae"):
        r = runner.invoke(app, ["zoo", "train", "--real", str(mini_zip), "--family", family, "--steps", "2",
                                "--batch-size", "8", "--limit", "32", "--seed", "1", "--out", str(tmp_path / family)])
        assert r.exit_code == 0, r.output
        assert r.output.strip().endswith(WEIGHTS_FILE)
        assert f"wrote the {family} generator's weights after 2 steps: " in r.stderr
        r = runner.invoke(app, ["zoo", "sample", str(tmp_path / family), "--n", "4", "--out", str(out_zip)])
        assert r.exit_code == 0, r.output
        assert r.stderr.strip().splitlines()[-1] == f"wrote 4 sampled images: {out_zip}"
    with zipfile.ZipFile(out_zip) as zf:
        names = sorted(zf.namelist())
        marker = json.loads(zf.read(MARKER))
    assert names == sorted([MARKER, *(f"FAKE/{f}/{i:06d}.jpg" for f in ("gan-nearest", "vae") for i in range(4))])
    assert set(marker["families"]) == {"gan-nearest", "vae"}
    assert marker["families"]["vae"]["weights"]["n_real_images"] == "32"
    # sampling a family again replaces only that family's images
    r = runner.invoke(app, ["zoo", "sample", str(tmp_path / "vae"), "--n", "2", "--out", str(out_zip)])
    assert r.exit_code == 0, r.output
    items = open_source(out_zip).items()
    assert sorted((it.source, it.label) for it in items) == [("gan-nearest", 1)] * 4 + [("vae", 1)] * 2


def test_cli_refusals_are_one_line(real64: np.ndarray, tmp_path: Path) -> None:
    train_generator(real64, "gan-nearest", tmp_path / "g", seed=0, steps=1, batch_size=4)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "other.zip").write_bytes(b"not a zip")
    only_fake = tmp_path / "only-fake" / "FAKE"
    only_fake.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(only_fake / "a.jpg")
    calls = {
        "non-empty folder that is no zoo sample folder": ["zoo", "sample", str(tmp_path / "g"), "--n", "2", "--out",
                                                          str(tmp_path / "mine")],
        "is not a zip": ["zoo", "sample", str(tmp_path / "g"), "--n", "2", "--out", str(tmp_path / "other.zip")],
        "unknown generator family": ["zoo", "train", "--real", str(tmp_path), "--family", "gan-magic", "--out",
                                     str(tmp_path / "x")],
        "no REAL images": ["zoo", "train", "--real", str(tmp_path / "only-fake"), "--family", "vae", "--out",
                           str(tmp_path / "y")],
        "holds no zoo generator": ["zoo", "train", "--real", str(tmp_path / "only-fake"), "--family", "vae",
                                   "--out", str(tmp_path / "mine")],
    }
    for expected, args in calls.items():
        r = runner.invoke(app, args)
        assert r.exit_code == 1, (expected, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (expected, r.output)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "other.zip").read_bytes() == b"not a zip"
