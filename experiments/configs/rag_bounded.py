r"""Bounded memory: 100k facts streamed into 20k slots, FIFO and LRU eviction.

  python -m experiments.train --config=experiments/configs/rag_bounded.py \
      --workdir=runs/rag_bounded
  python -m experiments.train --config=experiments/configs/rag_bounded.py:smoke --workdir=/tmp/s
"""

from experiments.configs import rag_qa


def get_config(arg=None):
  c = rag_qa.get_config(arg)
  c.stages = ("qa", "bounded")
  c.closed_book = False
  c.closed_book_all_steps = 0
  return c
