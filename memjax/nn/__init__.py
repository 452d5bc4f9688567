"""Flax NNX modules built from memjax's pure memory functions."""

from memjax.nn import rag_reader
from memjax.nn.rag_reader import KVMemoryReader

__all__ = [
    "KVMemoryReader",
    "rag_reader",
]
