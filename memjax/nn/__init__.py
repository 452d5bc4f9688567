"""Flax NNX modules built from memjax's pure memory functions."""
