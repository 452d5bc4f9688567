"""Data for memjax's tasks: pure NumPy / jax.random, deterministic from a seed, no downloads."""

from memjax.tasks import facts

__all__ = [
    "facts",
]
