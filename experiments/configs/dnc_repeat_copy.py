r"""DNC on repeat copy: lengths 1-5, 1-5 repeats, 8 bits, 32 x 20 memory.

Smaller than the NTM paper's 1-10 x 1-10 so that it trains in minutes on a CPU.

  python -m experiments.train --config=experiments/configs/dnc_repeat_copy.py \
      --workdir=runs/dnc_repeat_copy
"""

from experiments.configs import algorithmic_base


def get_config(arg=None):
  c = algorithmic_base.base_config()
  c.task = {"name": "repeat_copy", "bits": 8, "min_length": 1, "max_length": 5,
            "min_repeats": 1, "max_repeats": 5}
  c.model = {"name": "dnc", "memory_size": 32, "word_size": 20, "num_read_heads": 1,
             "controller": "lstm", "controller_size": 100, "memory_init": "constant",
             "clip_value": 20.0}
  c.num_steps = 40000
  c.eval_lengths = (5, 8, 10)
  if arg == "smoke":
    c.task.max_length = 3
    c.task.max_repeats = 3
    c.eval_lengths = (3, 4)
    algorithmic_base.smoke(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; known: smoke")
  return c
