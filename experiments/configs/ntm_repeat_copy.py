r"""NTM on repeat copy (NTM paper 4.2): lengths 1-10, 1-10 repeats, 8 bits.

  python -m experiments.train --config=experiments/configs/ntm_repeat_copy.py \
      --workdir=runs/ntm_repeat_copy
"""

from experiments.configs import algorithmic_base


def get_config(arg=None):
  c = algorithmic_base.base_config()
  c.task = {"name": "repeat_copy", "bits": 8, "min_length": 1, "max_length": 10,
            "min_repeats": 1, "max_repeats": 10}
  c.num_steps = 40000
  c.eval_lengths = (10, 15, 20)   # sequence lengths, repeats still 1-10
  if arg == "smoke":
    c.task.max_length = 3
    c.task.max_repeats = 3
    c.eval_lengths = (3, 5)
    algorithmic_base.smoke(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; known: smoke")
  return c
