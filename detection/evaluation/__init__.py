"""One evaluator for every detector: `DetectionEvaluator(class_names=...).update(...).compute()`."""

from detection.evaluation.evaluator import DetectionEvaluator

__all__ = ["DetectionEvaluator"]
