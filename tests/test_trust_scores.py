"""What a row says must be what realfake knows (issue 27): a p_fake that is a probability, the calibrated
log-odds that keep clear-cut images apart, and a reason beside every 'uncertain'."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import numpy as np
import pytest

from realfake.calibration import Calibration, Typicality, apply_temperature
from realfake.data.cache import load_dataset
from realfake.detector import ROW_FIELDS, Detector
from realfake.predict import write_rows


@pytest.fixture(scope="module")
def distinct_images(mini_zip):
    ds = load_dataset(mini_zip, progress=False)
    flat = np.asarray(ds.images).reshape(len(ds), -1)
    _, first = np.unique(flat, axis=0, return_index=True)
    images = np.asarray(ds.images)[np.sort(first)[:200]]
    assert len(images) == 200
    return images


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_200_distinct_images_get_at_least_195_distinct_logits(trained_run, distinct_images, precision):
    """A bf16 logit has 8 significant bits: three photos once shared one score. The head runs in fp32, and the rows
    carry the calibrated log-odds in full."""
    det = Detector.load(trained_run, device="cpu", precision=precision)
    rows = det.predict_batch([f"{i}.png" for i in range(200)], distinct_images, [None] * 200).predictions()
    assert len({r.logit for r in rows}) >= 195
    assert all(r.p_fake == round(float(apply_temperature(np.array([r.logit * det.temperature]),
                                                         det.temperature)[0]), 6) for r in rows)


def test_p_fake_is_sigmoid_of_the_row_logit_and_the_threshold_is_applied_to_it(trained_run, distinct_images):
    det = Detector.load(trained_run, device="cpu", precision="fp32")
    raw = det.predict_logits(distinct_images)
    batch = det.predict_batch([str(i) for i in range(200)], distinct_images, [None] * 200)
    np.testing.assert_array_equal(batch.logit, raw / det.temperature)
    np.testing.assert_allclose(batch.p_fake, 1 / (1 + np.exp(-batch.logit)), rtol=1e-12)
    decided = [i for i, label in enumerate(batch.labels) if label != "uncertain"]
    assert all((batch.labels[i] == "FAKE") == (batch.p_fake[i] >= det.threshold) for i in decided)


def _calibration() -> Calibration:
    q = tuple(np.linspace(-4, 2, 101))
    return Calibration(temperature=1.0, threshold=0.5, uncertain_band=(0.45, 0.55),
                       ood=Typicality(real=q, fake=tuple(np.linspace(0, 4, 101)), level=0.96))


def test_every_uncertain_label_has_a_reason_and_no_other_has_one():
    cal = _calibration()
    z = np.array([-3.0, 0.1, -0.1, 3.0, -9.0, 9.0, 0.0])
    p = cal.p_fake(z)
    ood = cal.ood_scores(z)
    labels, reasons = cal.labels(p, ood), cal.reasons(p, ood)
    assert [(lab, why) for lab, why in zip(labels, reasons, strict=True)] == [
        ("REAL", None), ("uncertain", "ood"), ("uncertain", "band"), ("FAKE", None), ("REAL", None),
        ("FAKE", None), ("uncertain", "ood")]
    assert all((lab == "uncertain") == (why is not None) for lab, why in zip(labels, reasons, strict=True))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_reason_and_logit_travel_in_every_output_format(trained_run, distinct_images, fmt, tmp_path):
    det = Detector.load(trained_run, device="cpu", precision="fp32")
    det.calibration = replace(det.calibration, uncertain_band=(0.0, 1.0))  # every image uncertain, by the band
    batch = det.predict_batch([f"{i}.png" for i in range(5)], distinct_images[:5], [None] * 5)
    assert set(batch.labels) == {"uncertain"}
    if fmt == "parquet":
        pq = pytest.importorskip("pyarrow.parquet")
        from realfake.predict import write_file

        write_file([batch], tmp_path / "rows.parquet")
        rows = pq.read_table(tmp_path / "rows.parquet").to_pylist()
    else:
        out = io.StringIO(newline="")
        write_rows([batch], fmt, out)
        text = out.getvalue()
        rows = ([json.loads(line) for line in text.splitlines()] if fmt == "jsonl"
                else list(csv.DictReader(io.StringIO(text))))
    assert len(rows) == 5
    for row, z in zip(rows, batch.logit.tolist(), strict=True):
        assert row["reason"] in ("band", "ood")
        assert float(row["logit"]) == z  # in full: the printed number is the float itself
    if fmt == "csv":
        assert list(rows[0]) == list(ROW_FIELDS)
