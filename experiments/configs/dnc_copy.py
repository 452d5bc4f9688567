r"""DNC, LSTM controller, on the copy task (lengths 1-20, 8 bits, 64 x 20 memory).

  python -m experiments.train --config=experiments/configs/dnc_copy.py --workdir=runs/dnc_copy
"""

from experiments.configs import algorithmic_base


def get_config(arg=None):
  c = algorithmic_base.base_config()
  c.model = {"name": "dnc", "memory_size": 64, "word_size": 20, "num_read_heads": 1,
             "controller": "lstm", "controller_size": 100, "memory_init": "constant",
             "clip_value": 20.0}
  c.eval_lengths = (20, 30, 40, 60)
  if arg == "smoke":
    c.task.max_length = 4
    c.eval_lengths = (4, 8)
    algorithmic_base.smoke(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; known: smoke")
  return c
