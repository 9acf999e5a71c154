"""The zoo as shipped: fp16 packs (`realfake zoo pack`), the packaged lookup (`REALFAKE_ZOO_DIR` stands in for the
package's own folder, which holds no weights in a checkout), and `train --extra-fakes zoo`: sampled from the run's
seed, cached, per family, recorded in run.json and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from tests.clitools import assert_one_line_error, cli_inline

from realfake.config import RunConfig
from realfake.errors import RealfakeError
from realfake.rundir import RunDir
from realfake.zoo.builtin import ZOO_ENV, builtin_zoo, generators_in, zoo_members
from realfake.zoo.extras import CHUNK, per_family_counts, zoo_extras
from realfake.zoo.sample import MARKER, sample_images
from realfake.zoo.train import train_generator
from realfake.zoo.weights import MAX_PACKED_BYTES, load_generator, pack_generator, read_info

TINY_DDPM = {"timesteps": 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny generators (a few steps each) as `zoo train` folders: gan-nearest and ddpm (4 denoising steps)."""
    rng = np.random.default_rng(0)
    real = np.ascontiguousarray(rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8).repeat(4, 1).repeat(4, 2))
    root = tmp_path_factory.mktemp("zoo-trained")
    train_generator(real, "gan-nearest", root / "gan-nearest", seed=0, steps=2, batch_size=4)
    train_generator(real, "ddpm", root / "ddpm", seed=0, steps=1, batch_size=4, settings=TINY_DDPM)
    return root


@pytest.fixture(scope="module")
def packed(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo-packed")
    proc = cli_inline("zoo", "pack", trained / "gan-nearest", trained / "ddpm", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_pack_writes_fp16_with_the_header_and_loads_as_fp32(trained: Path, packed: Path) -> None:
    files = sorted(p.name for p in packed.iterdir())
    assert files == ["ddpm.safetensors", "gan-nearest.safetensors"]
    for fam in ("gan-nearest", "ddpm"):
        f = packed / f"{fam}.safetensors"
        assert f.stat().st_size < MAX_PACKED_BYTES
        with safe_open(str(f), "pt") as st:
            meta = st.metadata()
            names = st.keys()  # a safe_open handle is not iterable
            dtypes = {st.get_tensor(k).dtype for k in names}
        assert meta["dtype"] == "float16" and meta["family"] == fam
        assert torch.float16 in dtypes and torch.float32 not in dtypes
        assert read_info(f) == read_info(trained / fam)  # the same header, plus dtype
        full, _ = load_generator(trained / fam)
        half, info = load_generator(f)
        for (k, a), b in zip(full.state_dict().items(), half.state_dict().values(), strict=True):
            assert b.dtype == a.dtype, k  # upcast on load
            if a.is_floating_point():
                assert torch.equal(b, a.half().float()), k
        assert sample_images(half, info, 2, seed=1).shape == (2, 32, 32, 3)
    again = pack_generator(trained / "ddpm", packed.parent / "again")
    assert again.read_bytes() == (packed / "ddpm.safetensors").read_bytes()  # packing is reproducible


def test_non_finite_weights_are_refused_in_one_line(packed: Path, tmp_path: Path) -> None:
    src = packed / "gan-nearest.safetensors"
    with safe_open(str(src), "pt") as st:
        names = st.keys()
        meta, tensors = st.metadata(), {k: st.get_tensor(k) for k in names}
    tensors["stem.weight"] = tensors["stem.weight"].clone()
    tensors["stem.weight"][0, 0] = float("nan")
    bad = tmp_path / "gan-nearest.safetensors"
    bad.write_bytes(st_save(tensors, metadata=meta))
    with pytest.raises(RealfakeError, match="non-finite weights in stem.weight") as e:
        load_generator(bad)
    assert "\n" not in str(e.value)
    proc = cli_inline("zoo", "sample", bad, "--n", 1, "--out", tmp_path / "s")
    assert_one_line_error(proc, "non-finite weights")


def test_pack_refuses_two_of_a_family(trained: Path, packed: Path, tmp_path: Path) -> None:
    proc = cli_inline("zoo", "pack", trained / "ddpm", packed / "ddpm.safetensors", "--out", tmp_path / "o")
    assert_one_line_error(proc, "two generators of family 'ddpm'")
    assert not (tmp_path / "o").exists()


def test_builtin_zoo_lists_the_packaged_families(packed: Path, trained: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ZOO_ENV, str(packed))
    zoo = builtin_zoo()
    assert [m.family for m in zoo] == ["ddpm", "gan-nearest"]
    assert [m.path for m in zoo] == [packed / "ddpm.safetensors", packed / "gan-nearest.safetensors"]
    assert zoo[0].info.settings["timesteps"] == TINY_DDPM["timesteps"]
    assert [m.family for m in zoo_members("zoo")[0]] == ["ddpm", "gan-nearest"]
    # a folder of `zoo train` folders is a zoo too; a folder of images, or an empty one, is not
    assert [m.family for m in generators_in(trained)] == ["ddpm", "gan-nearest"]
    assert zoo_members(trained) is not None and zoo_members(tmp_path) is None
    monkeypatch.setenv(ZOO_ENV, str(tmp_path / "none"))
    with pytest.raises(RealfakeError, match="no packaged generator zoo") as e:
        builtin_zoo()
    assert "\n" not in str(e.value)


def test_a_missing_packaged_zoo_is_one_line(mini_zip: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ZOO_ENV, str(tmp_path / "empty"))
    proc = cli_inline("train", "--data", mini_zip, "--extra-fakes", "zoo", "--model", "fast", "--epochs", 1,
                      "--weights", "none", "--device", "cpu", "--out", tmp_path / "run")
    assert_one_line_error(proc, "no packaged generator zoo")
    assert not (tmp_path / "run").exists()


def test_counts_split_evenly_and_the_capped_ddpm_leaves_its_share_to_the_others(packed: Path, monkeypatch) -> None:
    import realfake.zoo.extras as extras

    zoo = builtin_zoo(packed)
    assert per_family_counts(zoo, 10) == {"ddpm": 5, "gan-nearest": 5}
    monkeypatch.setattr(extras, "MAX_PASSES", 4 * CHUNK)  # ddpm (4 steps) may sample CHUNK images
    assert per_family_counts(zoo, 3 * CHUNK) == {"ddpm": CHUNK, "gan-nearest": 2 * CHUNK}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}


def test_zoo_samples_are_reproducible_cached_and_per_family(packed: Path, tmp_path: Path) -> None:
    zoo = builtin_zoo(packed)
    a = zoo_extras(zoo, "here", 10, seed=3, root=tmp_path / "a")
    b = zoo_extras(zoo, "here", 10, seed=3, root=tmp_path / "b")
    files = _files(a.folder)
    assert sorted(files) == [f"FAKE/{f}/{i:06d}.jpg" for f in ("ddpm", "gan-nearest") for i in range(5)]
    assert files == _files(b.folder)  # the same seed, the same bytes, whatever the cache
    assert json.loads((a.folder / MARKER).read_text())["families"]["ddpm"]["n"] == 5
    assert a.provenance["sampled_per_family"] == {"ddpm": 5, "gan-nearest": 5} and a.provenance["seed"] == 3
    assert a.provenance["generators"]["ddpm"]["sha256"] == zoo[0].sha256()
    assert a.folder.is_relative_to(tmp_path / "a")
    # a larger draw extends the cached pool: its first images are the smaller draw's
    big = _files(zoo_extras(zoo, "here", 2 * CHUNK + 4, seed=3, root=tmp_path / "a").folder)
    assert all(big[k] == v for k, v in files.items())
    other = _files(zoo_extras(zoo, "here", 10, seed=4, root=tmp_path / "a").folder)
    assert other.keys() == files.keys() and other != files
    # a second call samples nothing: the pools' files are left as they are
    pools = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "zoo-samples").rglob("*.jpg")}
    zoo_extras(zoo, "here", 10, seed=3, root=tmp_path / "a")
    assert pools == {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "zoo-samples").rglob("*.jpg")}


@pytest.fixture(scope="module")
def zoo_run(mini_zip: Path, packed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from realfake import training

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ZOO_ENV, str(packed))
        mp.setenv("REALFAKE_CACHE_DIR", str(tmp_path_factory.mktemp("zoo-cache")))
        cfg = RunConfig(data=str(mini_zip), limit=200, epochs=1, model="fast", weights="none", device="cpu",
                        seed=5, out=str(tmp_path_factory.mktemp("zoo-run") / "run"), extra_fakes="zoo",
                        extra_fakes_share=0.25, workers=1)
        return training.train(cfg, progress=False, log=lambda m: None)


def test_train_on_the_packaged_zoo_records_its_families(zoo_run: Path, packed: Path) -> None:
    rd = RunDir(zoo_run)
    assert rd.read_yaml(RunDir.CONFIG)["extra_fakes"] == "zoo"
    for rec in (rd.info()["extra_fakes"], rd.read_json(RunDir.DATA_REPORT)["extra_fakes"]):
        assert rec["path"] == "the packaged generator zoo"
        assert set(rec["per_family"]) == {"ddpm", "gan-nearest"}
        assert sum(rec["zoo"]["sampled_per_family"].values()) >= rec["n_used"] > 0
        assert rec["zoo"]["seed"] == 5 and rec["zoo"]["jpeg_quality"] == 75
        assert {Path(g["path"]) for g in rec["zoo"]["generators"].values()} == set(packed.iterdir())
        assert rec["in_splits"] == ["train"] and "count toward no reported home figure" in rec["home_metrics"]
    split, data = rd.read_json(RunDir.SPLIT), rd.read_json(RunDir.DATA_REPORT)
    assert max(split["val"]) < 200 and max(split["test"]) < 200  # home figures: the data's own images
    assert {"ddpm", "gan-nearest"} <= set(data["split_sources"]["train"])
    assert not {"ddpm", "gan-nearest"} & set(data["split_sources"]["test"])
    html = (zoo_run / RunDir.REPORT).read_text()
    assert "extra fakes from the packaged generator zoo (sampled with seed 5, JPEG q75)" in html
    assert "ddpm" in html and "gan-nearest" in html and "alone" in html


def test_a_run_on_the_zoo_rebuilds_the_same_data(zoo_run: Path, packed: Path, monkeypatch) -> None:
    """Evaluate and resume rebuild the run's data from config.yaml (here in a fresh cache): the zoo's samples come
    back byte for byte, so the saved split's indices still point at the images trained on."""
    from realfake.evaluation import run_data

    monkeypatch.setenv(ZOO_ENV, str(packed))
    rd = RunDir(zoo_run)
    ds = run_data(rd.config(), progress=False, log=lambda m: None)
    assert ds.extra_start == 200 and ds.extra_origin is not None
    then = Path(rd.info()["extra_fakes"]["zoo"]["folder"])
    assert Path(ds.extra_origin["folder"]) != then  # another cache folder (conftest gives each test its own)
    assert _files(Path(ds.extra_origin["folder"])) == _files(then)
