"""Flax NNX modules built from memjax's pure memory functions."""

from memjax.nn import rag_reader
from memjax.nn.controllers import FeedForwardController
from memjax.nn.controllers import LSTMController
from memjax.nn.controllers import LSTMState
from memjax.nn.dnc import DNCCell
from memjax.nn.dnc import DNCState
from memjax.nn.lstm import LSTMCell
from memjax.nn.memn2n import KeyValueMemoryNetwork
from memjax.nn.memn2n import KeyValueReader
from memjax.nn.memn2n import MemN2N
from memjax.nn.memn2n import MemoryNetworkOutput
from memjax.nn.memn2n import SentenceEncoder
from memjax.nn.ntm import NTMCell
from memjax.nn.ntm import NTMState
from memjax.nn.product_keys import ProductKeyMemory
from memjax.nn.rag_reader import KVMemoryReader
from memjax.nn.sam import SAMCell
from memjax.nn.sam import SAMState
from memjax.nn.sequence import run_cell
from memjax.nn.transformer import BlockState
from memjax.nn.transformer import MemoryAugmentedBlock
from memjax.nn.transformer import MemoryTransformer

__all__ = [
    "BlockState",
    "DNCCell",
    "DNCState",
    "FeedForwardController",
    "KVMemoryReader",
    "KeyValueMemoryNetwork",
    "KeyValueReader",
    "LSTMCell",
    "LSTMController",
    "LSTMState",
    "MemN2N",
    "MemoryAugmentedBlock",
    "MemoryNetworkOutput",
    "MemoryTransformer",
    "NTMCell",
    "NTMState",
    "ProductKeyMemory",
    "SAMCell",
    "SAMState",
    "SentenceEncoder",
    "rag_reader",
    "run_cell",
]
