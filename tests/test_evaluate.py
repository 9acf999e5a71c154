import numpy as np
import pytest

from realfake.calibration import sigmoid
from realfake.metrics import compute_metrics


def test_metrics_against_a_hand_made_case():
    # 4 REAL, 4 FAKE; at threshold 0.5: REAL -> 3 right, 1 called FAKE; FAKE -> 2 right, 2 called REAL
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.4, 0.45])
    m = compute_metrics(labels, p, 0.5)
    assert m["confusion_matrix"] == [[3, 1], [2, 2]]
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-6)  # tp / (tp + fp)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), abs=1e-6)
    # ROC AUC by counting: pairs (fake, real) with p_fake > p_real, out of 16
    wins = sum(pf > pr for pf in p[4:] for pr in p[:4])
    assert m["roc_auc"] == pytest.approx(wins / 16, abs=1e-6)
    assert m["n"] == 8 and m["threshold"] == 0.5
    assert m["per_class"]["REAL"]["recall"] == pytest.approx(0.75)
    assert m["per_class"]["REAL"]["support"] == 4
    required = {"accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "confusion_matrix", "n",
                "threshold"}
    assert required <= set(m)


def test_threshold_moves_the_verdicts():
    labels = np.array([0, 1])
    p = np.array([0.3, 0.6])
    assert compute_metrics(labels, p, 0.5)["accuracy"] == 1.0
    assert compute_metrics(labels, p, 0.7)["confusion_matrix"] == [[1, 0], [1, 0]]


def test_perfect_and_single_class_cases():
    m = compute_metrics(np.array([0, 1, 1]), np.array([0.0, 0.9, 1.0]))
    assert m["accuracy"] == 1.0 and m["roc_auc"] == 1.0 and m["average_precision"] == 1.0
    one = compute_metrics(np.array([1, 1]), np.array([0.9, 0.2]))
    assert one["roc_auc"] is None and one["average_precision"] is None
    assert one["accuracy"] == 0.5


def test_sigmoid_is_stable_at_extremes():
    s = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert np.all(np.isfinite(s)) and s[1] == 0.5 and s[0] < 1e-12 and s[2] == 1.0


def test_logits_by_chunk_reads_whole_batches_and_gives_one_calls_answer(tmp_path):
    """A split of a memory-mapped cache is read a chunk at a time (never copied whole), in whole batches."""
    from realfake.infer import logits_by_chunk

    images = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(300, 32, 32, 3))
    images[:] = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    rows = np.random.default_rng(1).permutation(300)[:250]
    seen = []

    def logits_of(x):
        assert type(x) is np.ndarray  # a copy of the chunk, not a view of the map
        seen.append(len(x))
        return x.reshape(len(x), -1).astype(np.float64).mean(axis=1)

    z = logits_by_chunk(logits_of, images, rows, batch_size=4)  # chunks of 64 rows
    assert seen == [64, 64, 64, 58]
    assert np.array_equal(z, np.asarray(images[rows]).reshape(250, -1).mean(axis=1))
    seen.clear()
    assert np.array_equal(logits_by_chunk(logits_of, images, rows[:10], batch_size=4), z[:10]) and seen == [10]
