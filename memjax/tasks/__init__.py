"""Data for memjax's tasks: pure NumPy / jax.random, deterministic from a seed, no downloads."""

from memjax.tasks import algorithmic
from memjax.tasks import babi
from memjax.tasks import facts
from memjax.tasks import retrieval

__all__ = [
    "algorithmic",
    "babi",
    "facts",
    "retrieval",
]
