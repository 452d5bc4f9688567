"""memjax: memory-augmented neural networks in JAX and Flax NNX.

The pure layer (`addressing`, `access`, `allocation`, `linkage`, `store`) holds
functions on arrays; `memjax.nn` holds Flax NNX modules built from them.
"""

from memjax import access
from memjax import addressing
from memjax import allocation
from memjax import conversation
from memjax import linkage
from memjax import retrieval
from memjax import sharded
from memjax import store
from memjax import xla
from memjax.store import KVMemory
from memjax.store import LookupResult

__version__ = "0.1.0"

__all__ = [
    "KVMemory",
    "LookupResult",
    "access",
    "addressing",
    "allocation",
    "conversation",
    "linkage",
    "retrieval",
    "sharded",
    "store",
    "xla",
]
