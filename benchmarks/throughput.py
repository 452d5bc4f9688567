r"""Training throughput of the NTM and DNC on the copy task, sequences per second.

  flock -x /work/cpu.lock python -m benchmarks.throughput            # all settings
  python -m benchmarks.throughput --models=ntm --batch_sizes=16      # one

Setting (issue 3): copy task, lengths uniform in 1-20 (padded to 41 steps),
8 bits, 128 x 20 memory, LSTM controller of 100 units, one read and one write
head, Adam with global-norm clipping. Each setting runs the trainer's own
jitted step (`memjax.training.algorithmic.build`) and its own loop: the host
draws the next batches with NumPy while the device trains on the current ones.
Compile time is the first call; throughput is measured over the calls after
it. For scale: the PyTorch NTM of loudinthecloud/pytorch-ntm manages about 100
sequences/s on one CPU core (its README).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app
from absl import flags

from experiments.configs import algorithmic_base
from memjax.training import algorithmic

_MODELS = flags.DEFINE_list("models", ["ntm", "dnc"], "Models to time.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "16", "64"], "Batch sizes.")
_SECONDS = flags.DEFINE_float("seconds", 8.0, "Measuring time per setting (after compile).")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 10, "Training steps per jitted call.")
_GROUPS = flags.DEFINE_list("scan_groups", ["1"], "Values of config.scan_groups to compare.")


def config_for(model: str, batch_size: int, groups: int = 1):
  c = algorithmic_base.base_config()
  if model == "dnc":
    c.model = {"name": "dnc", "memory_size": 128, "word_size": 20, "num_read_heads": 1,
               "controller": "lstm", "controller_size": 100, "memory_init": "constant",
               "clip_value": 20.0}
  c.batch_size = batch_size
  c.scan_groups = groups
  c.steps_per_call = _STEPS_PER_CALL.value
  c.log_every = c.checkpoint_every = c.steps_per_call
  c.num_steps = c.steps_per_call
  return c


def measure(model: str, batch_size: int, groups: int = 1) -> tuple[float, float, float]:
  """(compile seconds, training sequences per second, CPU ms per sequence) of one setting."""
  config = config_for(model, batch_size, groups)
  algorithmic.validate_config(config)
  exp = algorithmic.build(config)
  params, opt_state = exp.params, exp.optimizer.init(exp.params)
  k = config.steps_per_call
  start = time.perf_counter()
  params, opt_state, loss, _ = exp.train_chunk(params, opt_state, exp.batches(0, k))
  jax.block_until_ready(loss)
  compile_s = time.perf_counter() - start
  step, upcoming = k, exp.batches(k, k)
  start, cpu_start = time.perf_counter(), time.process_time()
  while True:
    params, opt_state, loss, _ = exp.train_chunk(params, opt_state, upcoming)
    step += k
    upcoming = exp.batches(step, k)
    loss = np.asarray(loss)
    elapsed = time.perf_counter() - start
    if elapsed >= _SECONDS.value:
      break
  cpu = time.process_time() - cpu_start
  if not np.all(np.isfinite(loss)):
    raise RuntimeError(f"non-finite loss for {model} at batch {batch_size}")
  sequences = (step - k) * batch_size
  return compile_s, sequences / elapsed, 1e3 * cpu / sequences


def main(argv):
  del argv
  print(f"JAX {jax.__version__} on {jax.default_backend()}, {jax.device_count()} device(s); "
        "copy lengths 1-20, 128 x 20 memory, LSTM 100, 1 read + 1 write head")
  print("| model | batch | scan groups | compile (s) | sequences/s | steps/s "
        "| CPU ms / sequence |")
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  for model in _MODELS.value:
    for b in (int(x) for x in _BATCHES.value):
      for g in (int(x) for x in _GROUPS.value):
        if b % g:
          continue
        compile_s, rate, cpu_ms = measure(model, b, g)
        print(f"| {model} | {b} | {g} | {compile_s:.1f} | {rate:,.0f} | {rate / b:.1f} "
              f"| {cpu_ms:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
