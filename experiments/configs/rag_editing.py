r"""Knowledge editing: 1,000 random edits made in memory, and the same made by fine-tuning.

  python -m experiments.train --config=experiments/configs/rag_editing.py \
      --workdir=runs/rag_editing
  python -m experiments.train --config=experiments/configs/rag_editing.py:smoke --workdir=/tmp/s
"""

from experiments.configs import rag_qa


def get_config(arg=None):
  c = rag_qa.get_config(arg)
  c.stages = ("qa", "editing")
  c.closed_book = False  # rag_qa.py compares with the readers without retrieval
  c.closed_book_all_steps = 0
  return c
