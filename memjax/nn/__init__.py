"""Flax NNX modules built from memjax's pure memory functions."""

from memjax.nn.controllers import FeedForwardController
from memjax.nn.controllers import LSTMController
from memjax.nn.controllers import LSTMState
from memjax.nn.dnc import DNCCell
from memjax.nn.dnc import DNCState
from memjax.nn.lstm import LSTMCell
from memjax.nn.ntm import NTMCell
from memjax.nn.ntm import NTMState
from memjax.nn.product_keys import ProductKeyMemory
from memjax.nn.sam import SAMCell
from memjax.nn.sam import SAMState
from memjax.nn.sequence import run_cell

__all__ = [
    "DNCCell",
    "DNCState",
    "FeedForwardController",
    "LSTMCell",
    "LSTMController",
    "LSTMState",
    "NTMCell",
    "NTMState",
    "ProductKeyMemory",
    "SAMCell",
    "SAMState",
    "run_cell",
]
