"""Calibration maths against cases whose answer is known: ECE, Brier, temperature, threshold policies, band."""

import numpy as np
import pytest

from realfake.calibration import (
    Calibration,
    apply_temperature,
    calibrate,
    choose_threshold,
    fit_temperature,
    label_of,
    labels_of,
    parse_band,
    parse_policy,
)
from realfake.config import RunConfig, validated
from realfake.errors import RealfakeError
from realfake.metrics import brier, calibration_metrics, ece, reliability_bins


def test_ece_of_a_perfectly_calibrated_toy_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)  # labels ~ Bernoulli(p): p is calibrated by construction
    assert ece(y, p) < 0.01


def test_ece_and_brier_by_hand():
    # all predictions 0.9 but only half are FAKE: one bin, gap |0.9 - 0.5|
    y = np.array([1, 0, 1, 0])
    p = np.full(4, 0.9)
    assert ece(y, p) == pytest.approx(0.4)
    assert brier(y, p) == pytest.approx((0.1**2 * 2 + 0.9**2 * 2) / 4)
    # two bins: p=0.1 for REAL (gap 0.1), p=1.0 for FAKE (gap 0, p=1 falls in the last bin)
    assert ece(np.array([0, 0, 1, 1]), np.array([0.1, 0.1, 1.0, 1.0])) == pytest.approx(0.05)
    bins = reliability_bins(np.array([0, 1]), np.array([0.0, 1.0]))
    assert bins["count"][0] == 1 and bins["count"][-1] == 1 and sum(bins["count"]) == 2
    assert len(bins["edges"]) == 16


def test_temperature_fitting_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    true_logit = rng.normal(0, 2.5, 50_000)
    y = (rng.uniform(0, 1, true_logit.size) < apply_temperature(true_logit)).astype(int)
    for t in (0.5, 3.0):
        assert fit_temperature(true_logit * t, y) == pytest.approx(t, rel=0.05)
    # calibrating the over-confident logits lowers the ECE
    over = true_logit * 3.0
    t = fit_temperature(over, y)
    assert ece(y, apply_temperature(over, t)) < ece(y, apply_temperature(over)) / 3


def test_temperature_with_no_evidence_is_one():
    assert fit_temperature(np.array([1.0, 2.0]), np.array([1, 1])) == 1.0
    with pytest.raises(RealfakeError):
        fit_temperature(np.array([1.0]), np.array([1, 0]))


def test_balanced_accuracy_threshold_on_a_hand_case():
    # 2 FAKE, 6 REAL. A cut between 0.7 and 0.9 gets every REAL right and one FAKE: bacc = (1/2 + 1)/2 = 0.75.
    # A cut between 0.3 and 0.6 (p >= t is FAKE) gets both FAKE, 5 of 6 REAL: bacc = (1 + 5/6)/2 ~ 0.917.
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    p = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.7, 0.6, 0.9])
    t = choose_threshold(y, p, "balanced")
    assert 0.3 < t < 0.6
    assert t == pytest.approx(0.45)
    pred = p >= t
    assert pred.tolist() == [False] * 5 + [True, True, True]
    # plain accuracy ties this cut with 0.7 < t < 0.9 (7 of 8 right each); balanced accuracy does not
    assert choose_threshold(np.array([0, 1]), np.array([0.2, 0.8]), "balanced") == pytest.approx(0.5)


def test_fpr_policy_respects_the_target_on_validation():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 5000)
    p = np.concatenate([rng.beta(2, 5, 5000), rng.beta(5, 2, 5000)])
    for target in (0.01, 0.05, 0.2):
        t = choose_threshold(y, p, f"fpr:{target}")
        fpr = np.mean(p[y == 0] >= t)
        assert fpr <= target
        assert fpr > target - 0.002  # and it is the lowest such threshold, not a needlessly strict one
    assert np.mean(p[y == 0] >= choose_threshold(y, p, "fpr:0")) == 0


def test_fixed_policy_and_policy_parsing():
    assert choose_threshold(np.array([0, 1]), np.array([0.1, 0.2]), "fixed:0.5") == 0.5
    assert str(parse_policy("FPR:0.01")) == "fpr:0.01"
    assert str(parse_policy("balanced")) == "balanced"
    for bad in ("fpr", "fpr:1.5", "fixed:0", "fixed:abc", "median", "balanced:3"):
        with pytest.raises(RealfakeError, match="threshold policy"):
            parse_policy(bad)
    with pytest.raises(RealfakeError, match="threshold_policy"):
        validated(RunConfig, {"threshold_policy": "fpr:2"})
    assert validated(RunConfig, {"threshold_policy": "fixed", "threshold": 0.7}).policy == "fixed:0.7"


def test_uncertain_band_labelling():
    band = parse_band("0.35:0.65")
    assert band == (0.35, 0.65)
    assert labels_of(np.array([0.1, 0.35, 0.5, 0.65, 0.66, 0.9]), 0.5, band) == [
        "REAL", "uncertain", "uncertain", "uncertain", "FAKE", "FAKE"
    ]
    assert label_of(0.5, 0.5, None) == "FAKE" and label_of(0.49, 0.5) == "REAL"
    assert parse_band(None) is None and parse_band("none") is None
    for bad in ("0.7:0.3", "0.5", "a:b", "0:1.5"):
        with pytest.raises(RealfakeError, match="uncertainty band"):
            parse_band(bad)


def test_calibration_metrics_report_the_band_and_both_eces():
    y = np.array([0, 0, 1, 1, 1])
    logits = np.array([-4.0, 0.2, 0.1, 4.0, -3.0])  # 0.2 and 0.1 fall inside the band at T = 1
    cal = Calibration(temperature=1.0, threshold=0.5, threshold_policy="fixed:0.5", uncertain_band=(0.4, 0.6))
    m = calibration_metrics(y, logits, cal)
    u = m["uncertain"]
    assert u["n_uncertain"] == 2 and u["n_decided"] == 3
    assert u["accuracy_decided"] == pytest.approx(2 / 3)  # -4 REAL right, 4 FAKE right, -3 FAKE wrong
    assert u["accuracy_all"] == pytest.approx(3 / 5)
    assert m["ece"] == m["ece_uncalibrated"] and m["temperature"] == 1.0
    assert "tta" not in m


def test_calibrate_stores_what_from_info_reads_back():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 2000)
    y = (rng.uniform(0, 1, z.size) < apply_temperature(z)).astype(int)
    cal = calibrate(z * 4, y, "fpr:0.05", "0.4:0.6", "flip")
    assert cal.temperature == pytest.approx(4, rel=0.15)
    again = Calibration.from_info(cal.to_info())
    assert again.threshold == cal.threshold and again.uncertain_band == (0.4, 0.6) and again.tta == "flip"
    assert again.temperature == pytest.approx(cal.temperature, abs=1e-5)
    assert "logit_offset" not in cal.to_info()
    old_run = Calibration.from_info({"threshold": 0.7})
    assert old_run.temperature == 1.0 and old_run.threshold == 0.7 and old_run.uncertain_band is None


def test_a_run_that_stored_its_cut_as_an_offset_keeps_every_verdict_and_gets_a_probability():
    """Runs from before: p = sigmoid((logit - offset) / T), FAKE from 0.5. Read back, the cut is on p = sigmoid(
    logit / T), where it always was, and p is the calibrated probability again."""
    t, offset = 0.3, -1.9
    cal = Calibration.from_info({"temperature": t, "threshold": 0.5, "logit_offset": offset})
    z = np.random.default_rng(0).uniform(-8, 8, 20000)
    assert np.array_equal(cal.is_fake(cal.p_fake(z)), apply_temperature(z - offset, t) >= 0.5)
    assert np.allclose(cal.p_fake(z), apply_temperature(z, t))
    assert cal.threshold == pytest.approx(apply_temperature(np.array([offset]), t)[0])


@pytest.mark.parametrize("policy", ["balanced", "fpr:0.005", "real:0.005"])
def test_a_chosen_threshold_is_a_cut_on_the_calibrated_probability(policy):
    """p_fake is sigmoid(logit / T), nothing folded in; the policy's cut is applied to it, wherever it lies."""
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 3000)
    z = np.where(y == 1, rng.normal(2.5, 1.2, y.size), rng.normal(-3.5, 0.6, y.size))  # REAL tight, FAKE spread
    cal = calibrate(z, y, policy)
    t = fit_temperature(z, y)
    before = choose_threshold(y, apply_temperature(z, t), policy)
    assert cal.threshold == before and cal.temperature == t
    held = np.concatenate([z, rng.uniform(-6, 6, 5000)])  # validation and unseen logits alike
    assert np.array_equal(cal.p_fake(held), apply_temperature(held, t))
    assert np.array_equal(cal.is_fake(cal.p_fake(held)), apply_temperature(held, t) >= before)
    if policy != "balanced":  # a REAL-anchored cut lies far below p = 0.5, and says so
        assert before < 0.05


def test_a_fixed_threshold_is_kept_on_p():
    z, y = _two_classes()
    cal = calibrate(z, y, "fixed:0.3")
    assert cal.threshold == 0.3


def _two_classes(n: int = 4000, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return np.where(y == 1, rng.normal(6, 1, n), rng.normal(-6, 1, n)), y


def test_ood_score_flags_about_five_percent_in_distribution_and_the_in_between():
    z, y = _two_classes()
    cal = calibrate(z, y, "balanced")
    assert cal.ood is not None and cal.ood.level == 0.96 and len(cal.ood.real) == 101
    zt, yt = _two_classes(seed=6)  # fresh images of the same two classes
    flagged = cal.out_of_distribution(cal.ood_scores(zt))
    assert 0.03 <= flagged[yt == 0].mean() <= 0.07 and 0.03 <= flagged[yt == 1].mean() <= 0.07
    # a generator the detector never saw lands between the classes: REAL by the threshold, but not typical REAL
    between = np.array([-2.0, 0.5, 2.0])
    ood = cal.ood_scores(between)
    assert (ood > 0.99).all() and cal.labels(cal.p_fake(between), ood) == ["uncertain"] * 3
    # typical images keep their label, and an extreme FAKE is typical of FAKE, not out of distribution
    typical = np.array([-6.0, 6.0, 12.0])
    assert cal.labels(cal.p_fake(typical), cal.ood_scores(typical)) == ["REAL", "FAKE", "FAKE"]
    # the score is a share: monotone towards the other class within REAL, in [0, 1]
    s = cal.ood_scores(np.linspace(-12, -1, 50))
    assert (np.diff(s) >= 0).all() and s.min() >= 0 and s.max() <= 1


def test_ood_round_trips_and_refuses_a_malformed_entry():
    z, y = _two_classes()
    cal = calibrate(z, y, "balanced", ood_level=0.9)
    again = Calibration.from_info(cal.to_info())
    assert again.ood is not None and again.ood.level == 0.9
    np.testing.assert_allclose(again.ood_scores(z), cal.ood_scores(z), atol=1e-5)
    assert calibrate(z, y, "balanced", ood_level=None).ood is None
    assert Calibration.from_info({"threshold": 0.5}).ood_scores(z) is None  # an older run: no score, no flags
    assert calibrate(z[y == 0], y[y == 0], "balanced").ood is None  # one class: nothing to be typical of
    for bad in ({"level": 0.95}, {"level": 2, "real": [0, 1], "fake": [0, 1]},
                {"level": 0.9, "real": [1, 0], "fake": [0, 1]}, {"level": 0.9, "real": "ab", "fake": [0, 1]}):
        with pytest.raises(RealfakeError, match="'ood' entry is malformed"):
            Calibration.from_info({"ood": bad})


def test_ood_metrics_count_flags_and_the_confidently_wrong():
    z, y = _two_classes()
    cal = calibrate(z, y, "balanced")
    unseen = np.array([-1.0, -0.5, -7.0, 5.0])  # fakes of an unseen generator: two in between, one deep REAL
    m = calibration_metrics(np.ones(4, int), unseen, cal)["ood"]
    assert m["n_flagged"] == 2 and m["fraction_flagged_fake"] == 0.5 and m["fraction_flagged_real"] is None
    assert m["confidently_wrong"] == 0.25  # -7: called REAL with the typicality of a real photo


def test_real_policy_is_fpr_when_the_real_photos_allow_it_and_never_stricter_than_balanced():
    z, y = _two_classes()  # well separated: the REAL-anchored cut sits below the balanced one
    p = apply_temperature(z)
    anchored = choose_threshold(y, p, "real:0.005")
    assert anchored == choose_threshold(y, p, "fpr:0.005") < choose_threshold(y, p, "balanced")
    rng = np.random.default_rng(2)  # a weak model: REAL scores spread into the fakes' range
    y2 = rng.integers(0, 2, 2000)
    p2 = apply_temperature(np.where(y2 == 1, rng.normal(1, 1.5, 2000), rng.normal(-1, 1.5, 2000)))
    assert choose_threshold(y2, p2, "real:0.005") == choose_threshold(y2, p2, "balanced")
    assert str(parse_policy("real:0.005")) == "real:0.005"
    with pytest.raises(RealfakeError, match="threshold policy"):
        parse_policy("real:1.5")
