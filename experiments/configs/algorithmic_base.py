"""Shared defaults of the algorithmic-task configs (ntm_*.py, dnc_*.py, lstm_copy.py).

They live in `memjax.training.algorithmic` so notebooks can use them too.
"""

from memjax.training.algorithmic import default_config as base_config
from memjax.training.algorithmic import shrink_for_smoke as smoke

__all__ = ["base_config", "smoke"]
