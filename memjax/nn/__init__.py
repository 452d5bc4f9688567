"""Flax NNX modules built from memjax's pure memory functions."""

from memjax.nn.controllers import FeedForwardController
from memjax.nn.controllers import LSTMController
from memjax.nn.controllers import LSTMState
from memjax.nn.dnc import DNCCell
from memjax.nn.dnc import DNCState
from memjax.nn.lstm import LSTMCell
from memjax.nn.ntm import NTMCell
from memjax.nn.ntm import NTMState
from memjax.nn.sequence import run_cell
from memjax.nn.transformer import BlockState
from memjax.nn.transformer import MemoryAugmentedBlock
from memjax.nn.transformer import MemoryTransformer

__all__ = [
    "BlockState",
    "DNCCell",
    "DNCState",
    "FeedForwardController",
    "LSTMCell",
    "LSTMController",
    "LSTMState",
    "MemoryAugmentedBlock",
    "MemoryTransformer",
    "NTMCell",
    "NTMState",
    "run_cell",
]
