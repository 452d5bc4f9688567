r"""NTM on associative recall (NTM paper 4.3): 2-6 items of 3 six-bit vectors.

  python -m experiments.train --config=experiments/configs/ntm_associative_recall.py \
      --workdir=runs/ntm_associative_recall
"""

from experiments.configs import algorithmic_base


def get_config(arg=None):
  c = algorithmic_base.base_config()
  c.task = {"name": "associative_recall", "bits": 6, "item_length": 3, "min_items": 2,
            "max_items": 6}
  c.num_steps = 40000
  c.eval_lengths = (6, 10, 15, 20)   # number of items
  if arg == "smoke":
    c.task.max_items = 3
    c.eval_lengths = (3, 4)
    algorithmic_base.smoke(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; known: smoke")
  return c
