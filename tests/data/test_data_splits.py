"""Train/val/test splits: stratified, disjoint, covering, reproducible; saved and restored."""

from __future__ import annotations

import json

import numpy as np
import pytest

from realfake.data.splits import make_split, split_from_json, split_to_json
from realfake.errors import RealfakeError

NAMES = ("train", "val", "test")


def labels_for(n_real, n_fake, seed=0):
    lab = np.array([0] * n_real + [1] * n_fake)
    return np.random.default_rng(seed).permutation(lab)


def check_partition(split, n):
    assert set(split) == set(NAMES)
    allidx = np.concatenate([split[k] for k in NAMES])
    assert len(allidx) == len(set(allidx.tolist())), "parts overlap"
    assert sorted(allidx.tolist()) == list(range(n)), "parts do not cover the data"
    for k in NAMES:
        assert split[k].dtype == np.int64
        assert np.all(np.diff(split[k]) > 0)  # sorted


@pytest.mark.parametrize(("n_real", "n_fake"), [(1000, 1000), (333, 101), (50, 17)])
def test_seed_protocol_70_20_10_per_class(n_real, n_fake):
    labels = labels_for(n_real, n_fake)
    split = make_split(labels, [None] * len(labels), "seed", seed=42)
    check_partition(split, len(labels))
    for cls, n in ((0, n_real), (1, n_fake)):
        for name, frac in zip(NAMES, (0.7, 0.2, 0.1), strict=True):
            got = int((labels[split[name]] == cls).sum())
            assert abs(got - frac * n) <= 1, (name, cls, got, frac * n)


def test_seed_protocol_ignores_split_folders():
    labels = labels_for(100, 100)
    folders = ["test"] * 100 + ["train"] * 100
    a = make_split(labels, folders, "seed", seed=1)
    b = make_split(labels, [None] * 200, "seed", seed=1)
    for k in NAMES:
        assert np.array_equal(a[k], b[k])


def test_seed_protocol_deterministic_and_seeded():
    labels = labels_for(300, 300)
    a = make_split(labels, [None] * 600, "seed", seed=42)
    b = make_split(labels.copy(), [None] * 600, "seed", seed=42)
    c = make_split(labels, [None] * 600, "seed", seed=43)
    for k in NAMES:
        assert np.array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in NAMES)
    assert not np.array_equal(a["test"], c["test"])


def test_seed_protocol_pinned_values():
    """The indices for a seed must never change across versions: saved runs and reports rely on it."""
    split = make_split(np.array([0] * 10 + [1] * 10), [None] * 20, "seed", seed=0)
    check_partition(split, 20)
    assert [len(split[k]) for k in NAMES] == [14, 4, 2]
    again = make_split(np.array([0] * 10 + [1] * 10), [None] * 20, "seed", seed=0)
    assert all(np.array_equal(split[k], again[k]) for k in NAMES)


def official_data(n_train_real=400, n_train_fake=300, n_test_real=100, n_test_fake=100):
    labels = np.array([0] * n_train_real + [1] * n_train_fake + [0] * n_test_real + [1] * n_test_fake, dtype=np.int64)
    folders = ["train"] * (n_train_real + n_train_fake) + ["test"] * (n_test_real + n_test_fake)
    order = np.random.default_rng(5).permutation(len(labels))  # interleave, as a path sort would
    return labels[order], [folders[i] for i in order]


def test_official_protocol_uses_test_folder():
    labels, folders = official_data()
    split = make_split(labels, folders, "official", seed=0)
    check_partition(split, len(labels))
    expected_test = [i for i, f in enumerate(folders) if f == "test"]
    assert split["test"].tolist() == expected_test
    assert all(folders[i] == "train" for i in np.concatenate([split["train"], split["val"]]))
    for cls, n in ((0, 400), (1, 300)):
        got = int((labels[split["val"]] == cls).sum())
        assert abs(got - 0.1 * n) <= 1, (cls, got)
        assert int((labels[split["train"]] == cls).sum()) == n - got


def test_official_protocol_test_is_only_the_test_folder():
    labels, folders = official_data(40, 40, 10, 10)
    labels = np.concatenate([labels, [0, 1, 0, 1]])
    folders = [*folders, None, None, "other", "other"]  # files outside train/ and test/
    split = make_split(labels, folders, "official", seed=0)
    assert split["test"].tolist() == [i for i, f in enumerate(folders) if f == "test"]
    used = np.concatenate([split[k] for k in NAMES])
    assert len(set(used.tolist())) == len(used)
    assert all(folders[i] == "train" for i in np.concatenate([split["train"], split["val"]]))


def test_official_protocol_deterministic_and_seeded():
    labels, folders = official_data()
    a = make_split(labels, folders, "official", seed=3)
    b = make_split(labels, folders, "official", seed=3)
    c = make_split(labels, folders, "official", seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in NAMES)
    assert np.array_equal(a["test"], c["test"])  # the test folder never depends on the seed
    assert not np.array_equal(a["val"], c["val"])


@pytest.mark.parametrize(
    "folders",
    [lambda n: [None] * n, lambda n: ["train"] * n, lambda n: ["test"] * n],
    ids=["unsplit", "train-only", "test-only"],
)
def test_official_protocol_needs_both_folders(folders):
    labels = labels_for(50, 50)
    with pytest.raises(RealfakeError, match="official"):
        make_split(labels, folders(100), "official", seed=0)


def test_unknown_protocol():
    with pytest.raises(RealfakeError, match="protocol"):
        make_split(labels_for(10, 10), [None] * 20, "random", seed=0)


def test_too_small_for_a_split():
    with pytest.raises(RealfakeError, match="empty"):
        make_split(np.array([0, 1]), [None, None], "seed", seed=0)


def test_json_round_trip():
    labels = labels_for(60, 40)
    split = make_split(labels, [None] * 100, "seed", seed=9)
    d = split_to_json(split, protocol="seed", seed=9)
    assert d["protocol"] == "seed" and d["seed"] == 9
    d = json.loads(json.dumps(d))  # as saved to split.json
    back = split_from_json(d, n=100)
    for k in NAMES:
        assert back[k].dtype == np.int64
        assert np.array_equal(back[k], split[k])


@pytest.mark.parametrize("bad", [100, 1000, -1])
def test_split_from_json_out_of_range(bad):
    d = {"train": [0, 1, 2], "val": [3], "test": [4, bad]}
    with pytest.raises(RealfakeError, match="test"):
        split_from_json(d, n=100)


def test_split_from_json_edge_index_ok():
    back = split_from_json({"train": [0, 99], "val": [], "test": [5]}, n=100)
    assert back["train"].tolist() == [0, 99] and len(back["val"]) == 0


def test_holdout_protocol_keeps_the_source_out_of_training_and_validation():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 300 + [1] * 300)
    sources = ["x"] * 300 + ["genA"] * 200 + ["genB"] * 100
    order = rng.permutation(600)
    labels, sources = labels[order], [sources[i] for i in order]
    split = make_split(labels, [None] * 600, "holdout:genB", seed=5, sources=sources)
    check_partition(split, 600)
    src = np.array(sources)
    assert not np.isin(np.concatenate([split["train"], split["val"]]), np.flatnonzero(src == "genB")).any()
    assert set(np.flatnonzero(src == "genB")) <= set(split["test"].tolist())  # every held-out image is tested
    rest = np.flatnonzero(src != "genB")
    assert len(split["train"]) == round(0.7 * 300) + round(0.7 * 200)  # the rest: 70/20/10 per class
    again = make_split(labels, [None] * 600, "holdout:genB", seed=5, sources=sources)
    assert all(np.array_equal(split[k], again[k]) for k in NAMES) and len(rest) == 500


def test_holdout_of_an_unknown_source_names_the_known_ones():
    with pytest.raises(RealfakeError, match=r"no image has source 'genC'; sources here: genA, x"):
        make_split(np.array([0, 1] * 10), [None] * 20, "holdout:genC", seed=0, sources=["x", "genA"] * 10)
    with pytest.raises(RealfakeError, match="sources here: none"):
        make_split(np.array([0, 1] * 10), [None] * 20, "holdout:genC", seed=0)


@pytest.mark.parametrize("bad", ["holdout:", "holdout: ", "random", "Seed"])
def test_config_refuses_unknown_protocols(bad):
    from realfake.config import RunConfig, validated

    with pytest.raises(RealfakeError, match="protocol must be seed, official or holdout:SOURCE"):
        validated(RunConfig, {"protocol": bad})
    assert validated(RunConfig, {"protocol": "holdout:genB"}).protocol == "holdout:genB"
