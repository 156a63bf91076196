"""One evaluator for every detector: `DetectionEvaluator(class_names=...).update(...).compute()`, and the
names its results are logged under (`validation_metrics`)."""

from detection.evaluation.evaluator import DetectionEvaluator, class_aps, validation_metrics

__all__ = ["DetectionEvaluator", "class_aps", "validation_metrics"]
