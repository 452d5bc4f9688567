"""Training utilities shared by the experiments and the notebooks."""

from memjax.training import metrics
from memjax.training.metrics import MetricWriter
from memjax.training.metrics import Progress
from memjax.training.metrics import read_metrics

__all__ = [
    "MetricWriter",
    "Progress",
    "metrics",
    "read_metrics",
]
