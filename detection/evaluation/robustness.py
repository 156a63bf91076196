"""The corruption benchmark's measures (Michaelis et al. 2019, "Benchmarking Robustness in Object Detection"):
P, the clean AP50; mPC, the AP50 averaged over every corruption and severity run; rPC = mPC / P; the same
for COCO's AP at IoU 0.5:0.95 where the evaluator computed it; and which of TIDE's errors grows under each
family of corruptions."""

import math
from statistics import fmean
from typing import Sequence

from detection.data.corruptions import FAMILIES, family_of
from detection.evaluation.errors import ERROR_TYPES

# what one evaluation gives the benchmark: its headline VOC07 AP50, COCO AP (nan when not computed) and
# TIDE's dAP per error type at IoU 0.5
Scores = dict  # {"ap50": float, "coco_ap": float, "dap": {error type: float}}


def performance(clean: float, corrupted: Sequence[float]) -> dict[str, float]:
    """P (clean), mPC (the mean over the corrupted runs) and rPC = mPC / P (nan when P is 0)."""
    mean = fmean(corrupted)
    return {"P": clean, "mPC": mean, "rPC": mean / clean if clean else math.nan}


def family_daps(runs: dict[tuple[str, int], Scores]) -> dict[str, dict[str, float]]:
    """Per corruption family run (in FAMILIES' order), each error type's dAP averaged over the family's runs."""
    families: dict[str, list[dict[str, float]]] = {family: [] for family in FAMILIES}
    for (corruption, _), scores in runs.items():
        families[family_of(corruption)].append(scores["dap"])
    return {family: {kind: fmean(dap[kind] for dap in daps) for kind in daps[0]}
            for family, daps in families.items() if daps}


def robustness_summary(clean: Scores, runs: dict[tuple[str, int], Scores]) -> dict:
    """What `robustness.json` holds: `P`, `mPC`, `rPC` (VOC07 AP50); `coco` likewise for COCO AP (absent
    when the evaluator did not compute it); `per_corruption` {corruption: {severity: AP50}} and
    `per_corruption_coco`; `dap` {'clean' or a family: {error type: dAP}}; `grown_most` {family: the one of
    TIDE's six error types (not the false positive / negative totals) whose dAP grew most over the clean
    one, with both dAPs}. `runs` maps (corruption, severity) to that run's scores."""
    summary = performance(clean["ap50"], [scores["ap50"] for scores in runs.values()])
    if not math.isnan(clean["coco_ap"]):
        summary["coco"] = performance(clean["coco_ap"], [scores["coco_ap"] for scores in runs.values()])
    for key, measure in (("per_corruption", "ap50"), ("per_corruption_coco", "coco_ap")):
        summary[key] = {}
        for (corruption, severity), scores in runs.items():
            summary[key].setdefault(corruption, {})[str(severity)] = scores[measure]
    summary["dap"] = {"clean": clean["dap"], **family_daps(runs)}
    summary["grown_most"] = {}
    for family, daps in summary["dap"].items():
        if family != "clean":
            kind = max(ERROR_TYPES, key=lambda name: daps[name] - clean["dap"][name])
            summary["grown_most"][family] = {"type": kind, "dAP": daps[kind], "clean_dAP": clean["dap"][kind]}
    return summary


def robustness_metrics(summary: dict) -> dict[str, float]:
    """The summary as tracking metrics: `robustness/P|mPC|rPC`, `robustness/coco/P|mPC|rPC`, and each
    corruption's AP50 averaged over its severities (`robustness/ap50/<corruption>`) and at each
    (`robustness/ap50/<corruption>/s<severity>`)."""
    metrics = {f"robustness/{key}": summary[key] for key in ("P", "mPC", "rPC")}
    metrics.update({f"robustness/coco/{key}": value for key, value in summary.get("coco", {}).items()})
    for corruption, by_severity in summary["per_corruption"].items():
        metrics[f"robustness/ap50/{corruption}"] = fmean(by_severity.values())
        metrics.update({f"robustness/ap50/{corruption}/s{severity}": ap for severity, ap in by_severity.items()})
    return metrics
