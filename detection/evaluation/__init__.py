"""One evaluator for every detector: `DetectionEvaluator(class_names=...).update(...).compute()`, and the
names its results are logged under (`validation_metrics`)."""

from detection.evaluation.evaluator import METRIC_GUIDE, DetectionEvaluator, class_aps, validation_metrics

__all__ = ["METRIC_GUIDE", "DetectionEvaluator", "class_aps", "validation_metrics"]
