r"""Trains and evaluates one memjax experiment described by a config file.

  python -m experiments.train --config=experiments/configs/ntm_copy.py \
      --workdir=/tmp/ntm_copy [--config.seed=1 ...]

`--config=FILE:smoke` picks the file's small variant. Every config names a
`trainer`: the module `memjax.training.<trainer>`, whose
`train_and_evaluate(config, workdir)` does the work (so notebooks can call it
too). Running the same command again on the same workdir resumes.
"""

from __future__ import annotations

import importlib
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (FILE or FILE:variant).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def trainer_module(config):
  """The `memjax.training` module a config names, or a one-line error."""
  name = config.get("trainer")
  if not name:
    raise ValueError("config has no `trainer` field naming a memjax.training module")
  try:
    return importlib.import_module(f"memjax.training.{name}")
  except ModuleNotFoundError as e:
    raise ValueError(f"unknown trainer {name!r}: no module memjax.training.{name}") from e


def main(argv):
  del argv
  config = _CONFIG.value
  try:
    module = trainer_module(config)
    if hasattr(module, "validate_config"):
      module.validate_config(config)
  except ValueError as e:
    # Bad configs fail in one line, before anything compiles.
    print(f"error: bad config: {e}", file=sys.stderr)
    sys.exit(2)
  # A config may split each batch over several CPU devices (one per core). The
  # device count must be fixed before JAX starts its backend, which the first
  # device query below does; trainers then find the devices already there.
  cpu_devices = config.get("cpu_devices", 1)
  if isinstance(cpu_devices, int) and cpu_devices > 1:
    jax.config.update("jax_num_cpu_devices", cpu_devices)
  logging.info("JAX %s on %s (%d devices)", jax.__version__, jax.default_backend(),
               jax.device_count())
  module.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
