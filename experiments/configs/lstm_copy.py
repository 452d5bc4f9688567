r"""Baseline: a plain LSTM (one layer of 256 units) on the copy task, lengths 1-20.

  python -m experiments.train --config=experiments/configs/lstm_copy.py --workdir=runs/lstm_copy
"""

from experiments.configs import algorithmic_base


def get_config(arg=None):
  c = algorithmic_base.base_config()
  c.model = {"name": "lstm", "hidden_size": 256, "num_layers": 1, "clip_value": 20.0}
  c.num_steps = 10000
  c.eval_lengths = (20, 40)
  if arg == "smoke":
    c.task.max_length = 4
    c.eval_lengths = (4, 8)
    algorithmic_base.smoke(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; known: smoke")
  return c
