"""The corruption benchmark's measures on planted scores: P, mPC, rPC as Michaelis et al. define them, per
corruption and family, and the names they are logged under."""

import math

import pytest

from detection.evaluation.robustness import robustness_metrics, robustness_summary



def scores(ap50, coco_ap, missed=0.1, localisation=0.05):
    """A run's scores; the false-negative total grows with `missed`, and more."""
    return {"ap50": ap50, "coco_ap": coco_ap, "dap": {
        "classification": 0.02, "localisation": localisation, "both": 0.0, "duplicate": 0.0, "background": 0.03,
        "missed": missed, "false_positives": 0.05 + localisation, "false_negatives": 2 * missed}}


RUNS = {("gaussian_noise", 1): scores(0.6, 0.3, missed=0.2), ("gaussian_noise", 3): scores(0.4, 0.2, missed=0.3),
        ("motion_blur", 1): scores(0.7, 0.35, localisation=0.15), ("fog", 2): scores(0.5, 0.25)}


def test_p_mpc_and_rpc_are_the_clean_ap_the_mean_over_every_run_and_their_ratio():
    summary = robustness_summary(scores(0.8, 0.4), RUNS)
    assert summary["P"] == 0.8 and summary["mPC"] == pytest.approx(0.55) and summary["rPC"] == pytest.approx(0.55 / 0.8)
    assert summary["coco"] == pytest.approx({"P": 0.4, "mPC": 0.275, "rPC": 0.275 / 0.4})
    assert summary["per_corruption"] == {"gaussian_noise": {"1": 0.6, "3": 0.4}, "motion_blur": {"1": 0.7},
                                         "fog": {"2": 0.5}}
    assert summary["per_corruption_coco"]["gaussian_noise"] == {"1": 0.3, "3": 0.2}


def test_each_familys_dap_is_its_runs_mean_and_the_error_type_grown_most_is_named():
    summary = robustness_summary(scores(0.8, 0.4), RUNS)
    assert set(summary["dap"]) == {"clean", "noise", "blur", "weather"}
    assert summary["dap"]["noise"]["missed"] == pytest.approx(0.25)
    # one of TIDE's six types, not the false-negative total that grew more
    assert summary["grown_most"]["noise"] == pytest.approx({"type": "missed", "dAP": 0.25, "clean_dAP": 0.1})
    assert summary["dap"]["noise"]["false_negatives"] - summary["dap"]["clean"]["false_negatives"] > 0.15 - 1e-9
    assert summary["grown_most"]["blur"]["type"] == "localisation"


def test_without_coco_ap_only_the_voc_measures_are_given_and_logged():
    summary = robustness_summary(scores(0.8, math.nan), {key: scores(value["ap50"], math.nan)
                                                          for key, value in RUNS.items()})
    metrics = robustness_metrics(summary)
    assert "coco" not in summary and not any(key.startswith("robustness/coco/") for key in metrics)
    assert metrics["robustness/P"] == 0.8 and metrics["robustness/rPC"] == pytest.approx(0.55 / 0.8)
    assert metrics["robustness/ap50/gaussian_noise"] == pytest.approx(0.5)
    assert metrics["robustness/ap50/gaussian_noise/s3"] == 0.4


def test_a_model_that_finds_nothing_clean_has_no_relative_performance():
    assert math.isnan(robustness_summary(scores(0.0, 0.0), RUNS)["rPC"])
