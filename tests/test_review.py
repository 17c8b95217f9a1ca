"""The review flag: a threshold chosen on validation, saved with the checkpoint, flags in every output."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from scripts.anatomies import Anatomy, AnatomySet
from scripts.metrics import LandmarkErrorMetric
from scripts.reports import format_report_markdown, write_predictions_csv
from scripts.review import (
    DEFAULT_REVIEW_THRESHOLD,
    ChooseReviewThresholds,
    FlagReviewd,
    ReviewThresholds,
    calibrate_checkpoint,
    choose_review_threshold,
    off_probability,
    review_figures,
)

ANATOMIES = AnatomySet([Anatomy("head", ("a", "b", "c"), (16, 16), spacing=(0.1, 0.1), sdr_radii=(2.0, 4.0))])


def test_threshold_is_the_smallest_catching_the_target_share_of_far_landmarks():
    conf = np.array([0.02, 0.05, 0.10, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60])
    errors = np.array([20.0, 15.0, 9.0, 5.0, 1.0, 1.0, 1.0, 6.0, 1.0, 1.0])  # 5 off by > 4 mm
    t, details = choose_review_threshold(conf, errors, radius=4.0, target_recall=0.8, method="empirical")
    # 4 of 5 must be caught: the 4th lowest far confidence is 0.30, the next confidence 0.35 -> halfway
    assert t == pytest.approx(0.325)
    assert details["off"] == 5 and details["recall"] == pytest.approx(80.0) and details["precision"] == pytest.approx(100.0)
    t_all, details = choose_review_threshold(conf, errors, radius=4.0, target_recall=1.0, method="empirical")
    assert t_all == pytest.approx(0.525) and details["recall"] == 100.0 and details["precision"] == pytest.approx(5 / 8 * 100)
    flagged = conf < t_all
    assert flagged[errors > 4].all()


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks from a known log-normal error model: confidences, errors (mm) and each one's true P(error > 4)."""
    from scipy.special import expit, ndtr

    x = rng.normal(0.4, 0.5, n)  # logit of the confidence
    mu, sd = 0.1 - 0.8 * x, np.exp(-0.4 - 0.2 * x)
    return expit(x), np.exp(rng.normal(mu, sd)), ndtr((mu - np.log(4.0)) / sd)


def test_off_probability_recovers_a_known_error_model():
    conf, errors, truth = _draw(np.random.default_rng(0), 3000)
    fitted = off_probability(conf, errors, 4.0)
    assert np.abs(fitted - truth).max() < 0.03 and np.corrcoef(fitted, truth)[0, 1] > 0.99
    # a model that ignores the confidence (all probabilities equal) would be far off
    assert np.abs(np.full_like(truth, truth.mean()) - truth).max() > 0.1


def test_the_model_estimate_is_steadier_than_the_quantile_of_few_far_landmarks():
    """Why "model" is the default: on 285 validation landmarks with a handful off, the quantile rule swings."""
    rng = np.random.default_rng(1)
    conf_pop, _, truth_pop = _draw(rng, 200_000)  # the unseen images

    def true_recall(t: float) -> float:
        return float(truth_pop[conf_pop < t].sum() / truth_pop.sum())

    recall = {"model": [], "empirical": []}
    for _ in range(40):
        conf, errors, _ = _draw(rng, 285)  # about 6 of them off by more than 4 mm, as on ISBI's validation
        if np.count_nonzero(errors > 4.0) < 2:
            continue  # training would keep the default threshold
        for method in recall:
            t, details = choose_review_threshold(conf, errors, 4.0, 0.9, min_positives=1, method=method)
            assert t is not None and details["method"] == method
            recall[method].append(true_recall(t))
    model, empirical = np.array(recall["model"]), np.array(recall["empirical"])
    assert model.std() < 0.5 * empirical.std()
    assert abs(model.mean() - 0.9) < 0.03 and (model < 0.85).mean() < 0.1


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        choose_review_threshold(np.array([0.1, 0.2, 0.3]), np.array([9.0, 9.0, 9.0]), 4.0, method="quantile")


def test_too_few_far_landmarks_keep_the_default():
    conf, errors = np.array([0.4, 0.5, 0.1]), np.array([1.0, 1.0, 9.0])
    t, details = choose_review_threshold(conf, errors, 4.0, min_positives=3, method="empirical")
    assert t is None and "1 landmark(s) off by more than 4" in details["reason"]
    t, details = choose_review_threshold(conf, np.array([1.0, 1.0, 2.0]), 4.0)  # the model needs one far landmark
    assert t is None and "0 landmark(s) off by more than 4" in details["reason"]
    thresholds = ReviewThresholds()
    records = [{"anatomy": "head", "confidence": np.array([0.4, 0.5, 0.1]), "errors": np.array([1.0, 1.0, 3.0])}]
    assert thresholds.choose(records, ANATOMIES) == {"head": DEFAULT_REVIEW_THRESHOLD}
    assert thresholds.source("head").startswith("default (0.3)")


def test_thresholds_travel_in_a_weights_only_checkpoint(tmp_path):
    thresholds = ReviewThresholds()
    rng = np.random.default_rng(0)
    records = [{"anatomy": "head", "confidence": rng.uniform(0, 1, 3), "errors": rng.uniform(0, 10, 3)} for _ in range(20)]
    chosen = thresholds.choose(records, ANATOMIES)
    path = str(tmp_path / "model.pt")
    torch.save({"model": {}, "review": thresholds.state_dict()}, path)
    loaded = ReviewThresholds.from_checkpoint(path)  # weights_only=True inside
    assert loaded.threshold("head") == pytest.approx(chosen["head"]) != DEFAULT_REVIEW_THRESHOLD
    assert loaded.source("head").startswith("validation")
    torch.save({"model": {}}, str(tmp_path / "old.pt"))
    assert ReviewThresholds.from_checkpoint(str(tmp_path / "old.pt")).threshold("head") == DEFAULT_REVIEW_THRESHOLD
    assert ReviewThresholds.from_checkpoint(str(tmp_path / "absent.pt")).threshold("hand") == DEFAULT_REVIEW_THRESHOLD
    assert ReviewThresholds.from_checkpoint(path, override=0.2).threshold("head") == 0.2


def test_flag_review_flags_low_and_unknown_confidences():
    flag = FlagReviewd(thresholds=ReviewThresholds(thresholds={"head": 0.25}))
    out = flag({"anatomy": "head", "pred_confidence": np.array([0.1, 0.3, np.nan])})
    assert out["pred_review"].tolist() == [True, False, True] and out["review_threshold"] == 0.25
    out = flag({"anatomy": "hand", "pred_confidence": np.array([0.29, 0.31])})
    assert out["pred_review"].tolist() == [True, False]  # the default for an anatomy without its own


def _metric_with_review() -> LandmarkErrorMetric:
    metric = LandmarkErrorMetric(ANATOMIES)
    true = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0]])
    for shift, review in ((0.0, [False, False, True]), (50.0, [True, False, True])):  # 5 mm off in the 2nd image
        pred = true + np.array([[0.0, 0.0], [0.0, 0.0], [shift, 0.0]])
        metric.update([{"pred_landmarks": pred, "landmarks_original": true, "spacing": [0.1, 0.1], "unit": "mm",
                        "anatomy": "head", "image": f"img{int(shift)}.png", "pred_confidence": np.array([0.5, 0.5, 0.1]),
                        "pred_review": np.array(review), "review_threshold": 0.3, "pred_mirrored": shift > 0}])  # fmt: skip
    return metric


def test_the_metric_reports_recall_and_precision_of_the_flag():
    summary = _metric_with_review().summary()["head"]
    review = summary["review"]
    assert review["radius"] == 4.0 and review["off"] == 1 and review["flagged"] == 3
    assert review["recall"] == 100.0 and review["precision"] == pytest.approx(100 / 3) and review["threshold"] == 0.3
    assert summary["mirrored_images"] == 1
    assert review_figures(np.array([5.0, np.nan, 1.0]), np.array([False, True, True]), 4.0)["recall"] == 0.0


def test_predictions_csv_and_report_carry_the_flag(tmp_path):
    metric = _metric_with_review()
    path = str(tmp_path / "predictions.csv")
    write_predictions_csv(metric.records, ANATOMIES, path)
    rows = list(csv.DictReader(open(path)))
    assert [r["review"] for r in rows] == ["false", "false", "true", "true", "false", "true"]
    assert [r["mirrored"] for r in rows] == ["false"] * 3 + ["true"] * 3
    report = format_report_markdown(metric.summary())
    assert "**Review flag** (confidence below 0.300): 3 of 6 landmarks flagged" in report
    assert "100.0 % are flagged (recall)" in report and "33.3 % are off by more than 4 mm (precision)" in report
    assert "1 of 2 images were read as left-right mirrored" in report


def test_validation_chooses_the_thresholds_before_the_checkpoint_is_saved():
    metric = LandmarkErrorMetric(ANATOMIES)
    metric.records = [{"anatomy": "head", "confidence": np.array([0.1, 0.2, 0.5]), "errors": np.array([9.0, 8.0, 1.0])}] * 2
    thresholds = ReviewThresholds()
    engine = Engine(lambda e, b: None)
    ChooseReviewThresholds(metric, thresholds, target_recall=1.0, min_positives=3, method="empirical").attach(engine)
    engine.run([0], max_epochs=1)
    assert thresholds.threshold("head") == pytest.approx(0.35)
    assert engine.state.metrics["review_threshold_head"] == pytest.approx(0.35)
    assert "empirical estimate" in thresholds.source("head")


def test_calibration_rechooses_the_thresholds_of_a_checkpoint_on_other_images(tmp_path):
    both = AnatomySet([*ANATOMIES, Anatomy("hand", ("p", "q"), (16, 16), sdr_radii=(2.0, 4.0, 10.0)),
                       Anatomy("chest", ("r", "s"), (16, 16), sdr_radii=(3.0, 9.0))])  # fmt: skip
    trained = ReviewThresholds(thresholds={"head": 0.2, "hand": 0.25, "chest": 0.35})
    src, out = str(tmp_path / "model.pt"), str(tmp_path / "model_calibrated.pt")
    torch.save({"model": {"w": torch.ones(2)}, "review": trained.state_dict()}, src)
    before = open(src, "rb").read()
    conf, errors, _ = _draw(np.random.default_rng(2), 300)
    records = [{"anatomy": "head", "confidence": conf[i : i + 3], "errors": errors[i : i + 3]} for i in range(0, 300, 3)]
    records.append({"anatomy": "chest", "confidence": np.array([0.1, 0.5]), "errors": np.array([1.0, 2.0])})  # none off
    report = calibrate_checkpoint(src, out, records, both, split="site B", report_path=str(tmp_path / "r.json"))
    expected, _ = choose_review_threshold(conf, errors, 4.0)
    loaded = ReviewThresholds.from_checkpoint(out)  # weights_only inside
    assert loaded.threshold("head") == pytest.approx(expected) != 0.2
    assert loaded.source("head").startswith("calibration on site B (recall >= 90 %")
    assert loaded.threshold("hand") == 0.25  # no hand among the images: kept
    assert loaded.threshold("chest") == 0.35 and "kept: 0 landmark(s) off by more than 9" in loaded.source("chest")
    assert torch.load(out, weights_only=True)["model"]["w"].tolist() == [1.0, 1.0]
    assert open(src, "rb").read() == before  # the original is left as it is
    head = report["anatomies"]["head"]
    assert set(report["anatomies"]) == {"head", "chest"} and head["before"]["threshold"] == 0.2
    assert head["after"]["threshold"] == pytest.approx(expected) and head["after"]["off"] == int((errors > 4).sum())
    assert (tmp_path / "r.json").exists()
    with pytest.raises(ValueError, match="no evaluated image of the checkpoint's anatomies in site C"):
        calibrate_checkpoint(src, out, [{**records[0], "anatomy": "pelvis"}], both, split="site C")
