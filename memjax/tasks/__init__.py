"""Data for memjax's tasks: pure NumPy / jax.random, deterministic from a seed, no downloads."""
