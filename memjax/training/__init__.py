"""Training utilities shared by the experiments and the notebooks."""

from memjax.training import babi
from memjax.training import checkpoint
from memjax.training import metrics
from memjax.training import plotting
from memjax.training.checkpoint import Checkpointer
from memjax.training.checkpoint import GracefulStop
from memjax.training.metrics import MetricWriter
from memjax.training.metrics import Progress
from memjax.training.metrics import read_metrics
from memjax.training.plotting import plot_episode
from memjax.training.plotting import plot_learning_curve

__all__ = [
    "Checkpointer",
    "GracefulStop",
    "MetricWriter",
    "Progress",
    "babi",
    "checkpoint",
    "metrics",
    "plot_episode",
    "plot_learning_curve",
    "plotting",
    "read_metrics",
]
