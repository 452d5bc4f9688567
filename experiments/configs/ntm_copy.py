r"""NTM, LSTM controller, on the copy task (lengths 1-20, 8 bits, 128 x 20 memory).

  python -m experiments.train --config=experiments/configs/ntm_copy.py --workdir=runs/ntm_copy
  python -m experiments.train --config=experiments/configs/ntm_copy.py:smoke --workdir=/tmp/s
"""

from experiments.configs import algorithmic_base


def get_config(arg=None):
  c = algorithmic_base.base_config()
  # Adam at 3e-3 leaves the initial plateau about four times sooner than at 1e-3
  # (measured: 625-725 steps against 2,900 to reach 0.1 bit errors per sequence).
  c.optimizer.learning_rate = 3e-3
  if arg == "smoke":
    c.task.max_length = 4
    c.eval_lengths = (4, 8)
    algorithmic_base.smoke(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; known: smoke")
  return c
