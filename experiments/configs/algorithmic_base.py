"""Shared defaults of the algorithmic-task configs (ntm_*.py, dnc_*.py, lstm_copy.py)."""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Defaults: NTM with an LSTM controller on copy, Adam, stop at 0.1 bit errors."""
  c = ml_collections.ConfigDict()
  c.trainer = "algorithmic"
  c.seed = 0
  c.task = ml_collections.ConfigDict({"name": "copy", "bits": 8, "min_length": 1,
                                      "max_length": 20})
  c.model = ml_collections.ConfigDict({
      "name": "ntm", "memory_size": 128, "word_size": 20, "num_read_heads": 1,
      "num_write_heads": 1, "shift_range": 1, "controller": "lstm", "controller_size": 100,
      "memory_init": "constant", "clip_value": 20.0})
  c.optimizer = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3,
                                           "grad_clip_norm": 10.0})
  c.batch_size = 16
  c.num_steps = 20000            # upper bound; the stopping criterion usually ends sooner
  c.steps_per_call = 25          # training steps per jitted call
  c.log_every = 100
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.error_window = 1000          # sequences in the moving average of bit errors
  c.stop_at_bit_errors = 0.1     # None: train for num_steps
  c.remat = True
  c.eval_lengths = (20, 40, 60, 80, 100)
  c.eval_batch_size = 32
  c.eval_batches = 2
  c.plots = True
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to run in seconds on a CPU and save several checkpoints."""
  if c.model.name == "lstm":
    c.model.hidden_size = 16
  else:
    c.model.memory_size = 16
    c.model.word_size = 6
    c.model.controller_size = 16
  c.batch_size = 4
  c.num_steps = 60
  c.steps_per_call = 5
  c.log_every = 5
  c.checkpoint_every = 10
  c.error_window = 20
  c.eval_batch_size = 4
  c.eval_batches = 1
  return c
