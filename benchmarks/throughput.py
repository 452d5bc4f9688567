r"""Training throughput of the NTM and DNC on the copy task, sequences per second.

  flock -x /work/cpu.lock python -m benchmarks.throughput            # all settings
  python -m benchmarks.throughput --models=ntm --batch_sizes=16      # one
  python -m benchmarks.throughput --models=ntm --batch_sizes=16 --cpu_devices=1,2

Setting (issue 3): copy task, lengths uniform in 1-20 (padded to 41 steps),
8 bits, 128 x 20 memory, LSTM controller of 100 units, one read and one write
head, Adam with global-norm clipping. By default the NTM runs as the ntm_copy
config trains it: each batch sorted by length and each device's part run as
two scan groups, each stopping after its own last scored step
(`--scan_groups=1` for one full-batch scan per device). Each setting runs the trainer's own
jitted step (`memjax.training.algorithmic.build`) and its own loop: the host
draws the next batches with NumPy while the device trains on the current ones.
Compile time is the first call; throughput is measured over the calls after
it. For scale: the PyTorch NTM of loudinthecloud/pytorch-ntm manages about 100
sequences/s on one CPU core (its README).

Side by side (`--interleave=SECONDS`): every setting is built and compiled
first, then they take turns of SECONDS each until each has run `--seconds`.
The table gives each setting's median rate over its turns and the median,
over rounds, of its rate divided by the first setting's in the same round.
On a shared or throttled machine a slow phase then hits every setting
alike, so the ratio column is the figure to quote when comparing code or
config changes. `--variant` adds settings with config overrides:

  python -m benchmarks.throughput --models=ntm --batch_sizes=16 --cpu_devices=2 \
      --interleave=1 --seconds=12 --variant=remat=False,hoist=False
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import time

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags

from experiments.configs import algorithmic_base
from memjax.training import algorithmic

_MODELS = flags.DEFINE_list("models", ["ntm", "dnc"], "Models to time.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "16", "64"], "Batch sizes.")
_SECONDS = flags.DEFINE_float("seconds", 8.0, "Measuring time per setting (after compile).")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 10, "Training steps per jitted call.")
_GROUPS = flags.DEFINE_list(
    "scan_groups", ["auto"], "Values of config.scan_groups to compare; 'auto': the ntm_copy "
    "config's 2 for the NTM where each device's batch part divides by 2 (else 1), 1 for the DNC.")
_SORT = flags.DEFINE_bool("sort_by_length", True, "config.sort_by_length for settings with more "
                          "than one scan group (each batch ordered by length, `length_order`).")
_DEVICES = flags.DEFINE_list("cpu_devices", ["1"], "Values of config.cpu_devices to compare "
                             "(CPU devices the batch is split across, one per core).")
_INTERLEAVE = flags.DEFINE_float(
    "interleave", 0.0, "If > 0: compile every setting first, then time them in turns of this "
    "many seconds each (side by side) and add the ratio to the first setting.")
_VARIANTS = flags.DEFINE_multi_string(
    "variant", [], "Config overrides 'key=value,key=value' (dotted keys, Python literals) "
    "timed as extra settings next to the plain config; repeat for several.")


def parse_overrides(text: str) -> dict:
  """'remat=False,model.memory_size=64' -> {'remat': False, 'model.memory_size': 64}."""
  overrides = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--variant items must be key=value; got {item!r} in {text!r}")
    try:
      overrides[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      overrides[key.strip()] = value.strip()
  return overrides


def scan_groups_for(model: str, batch_size: int, devices: int, groups: str) -> int:
  """An integer --scan_groups value, or 'auto' resolved (see the flag)."""
  if groups != "auto":
    return int(groups)
  return 2 if model == "ntm" and batch_size % (2 * devices) == 0 else 1


def config_for(model: str, batch_size: int, groups: int = 1, devices: int = 1,
               overrides: dict | None = None, sort_by_length: bool = True):
  c = algorithmic_base.base_config()
  if model == "dnc":
    c.model = {"name": "dnc", "memory_size": 128, "word_size": 20, "num_read_heads": 1,
               "controller": "lstm", "controller_size": 100, "memory_init": "constant",
               "clip_value": 20.0}
  c.batch_size = batch_size
  c.scan_groups = groups
  c.sort_by_length = sort_by_length and groups > 1
  c.cpu_devices = devices
  c.steps_per_call = _STEPS_PER_CALL.value
  c.log_every = c.checkpoint_every = c.steps_per_call
  c.num_steps = c.steps_per_call
  for key, value in (overrides or {}).items():
    *path, leaf = key.split(".")
    node = c
    for name in path:
      node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ValueError(f"--variant: the config has no key {key!r}")
    node[leaf] = value
  return c


@dataclasses.dataclass
class Setting:
  """One compiled training setting, timed in as many turns as asked (`run`)."""
  label: dict
  exp: algorithmic.Experiment
  state: tuple
  step: int
  upcoming: object
  compile_s: float
  sequences: int = 0
  cpu_seconds: float = 0.0
  rates: list = dataclasses.field(default_factory=list)

  @classmethod
  def build(cls, label: dict, config: ml_collections.ConfigDict) -> Setting:
    """Builds the trainer's step for a validated config and compiles it (the first call)."""
    exp = algorithmic.build(config)
    params, opt_state = exp.place((exp.params, exp.optimizer.init(exp.params)))
    k = config.steps_per_call
    start = time.perf_counter()
    params, opt_state, loss, _ = exp.train_chunk(params, opt_state, exp.batches(0, k))
    jax.block_until_ready(loss)
    return cls(label, exp, (params, opt_state), k, exp.batches(k, k),
               time.perf_counter() - start)

  def run(self, seconds: float) -> float:
    """Trains for about `seconds` (whole calls); returns this turn's sequences/s."""
    exp, k = self.exp, self.exp.config.steps_per_call
    params, opt_state = self.state
    steps = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while True:
      params, opt_state, loss, _ = exp.train_chunk(params, opt_state, self.upcoming)
      self.step += k
      steps += k
      self.upcoming = exp.batches(self.step, k)  # drawn while the device trains
      loss = np.asarray(loss)
      elapsed = time.perf_counter() - start
      if elapsed >= seconds:
        break
    self.cpu_seconds += time.process_time() - cpu_start
    self.state = (params, opt_state)
    if not np.all(np.isfinite(loss)):
      raise RuntimeError(f"non-finite loss in {self.label}")
    sequences = steps * exp.config.batch_size
    self.sequences += sequences
    self.rates.append(sequences / elapsed)
    return self.rates[-1]

  @property
  def rate(self) -> float:
    """Sequences/s: the median over turns (interleaved) or over the one long turn."""
    return float(np.median(self.rates))

  @property
  def cpu_ms_per_sequence(self) -> float:
    return 1e3 * self.cpu_seconds / self.sequences


def interleaved(settings: list[Setting], turn_seconds: float, total_seconds: float) -> list:
  """Runs the settings in turns; per setting, the median over rounds of its rate / the first's."""
  rounds = max(1, round(total_seconds / turn_seconds))
  ratios = [[] for _ in settings]
  for r in range(rounds):
    rates = [s.run(turn_seconds) for s in settings]
    for i, rate in enumerate(rates):
      ratios[i].append(rate / rates[0])
    print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{x:,.0f}" for x in rates), flush=True)
  return [float(np.median(x)) for x in ratios]


def main(argv):
  del argv
  algorithmic.use_cpu_devices(max(int(d) for d in _DEVICES.value))
  print(f"JAX {jax.__version__} on {jax.default_backend()}, {jax.device_count()} device(s); "
        "copy lengths 1-20, 128 x 20 memory, LSTM 100, 1 read + 1 write head")
  grid = []  # (label, config); a bad --variant fails here, before anything compiles
  ints = lambda values: [int(x) for x in values]
  for model, b, d, groups, v in itertools.product(
      _MODELS.value, ints(_BATCHES.value), ints(_DEVICES.value), _GROUPS.value,
      ("", *_VARIANTS.value)):
    g = scan_groups_for(model, b, d, groups)
    if b % (g * d) == 0:
      config = config_for(model, b, g, d, parse_overrides(v), _SORT.value)
      algorithmic.validate_config(config)
      grid.append((dict(model=model, batch=b, devices=d, groups=g, variant=v or "-"), config))
  side_by_side = _INTERLEAVE.value > 0
  settings, ratios = [], []
  if side_by_side:
    settings = [Setting.build(*args) for args in grid]
    ratios = interleaved(settings, _INTERLEAVE.value, _SECONDS.value)
  header = ("| model | batch | CPU devices | scan groups | variant | compile (s) | sequences/s "
            "| steps/s | CPU ms / sequence |")
  print(header + (" ratio to first |" if side_by_side else ""))
  print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"
        + (" ---: |" if side_by_side else ""))

  def row(s: Setting, extra: str = "") -> str:
    x = s.label
    return (f"| {x['model']} | {x['batch']} | {x['devices']} | {x['groups']} | {x['variant']} "
            f"| {s.compile_s:.1f} | {s.rate:,.0f} | {s.rate / x['batch']:.1f} "
            f"| {s.cpu_ms_per_sequence:.2f} |{extra}")

  for s, ratio in zip(settings, ratios):
    print(row(s, f" {ratio:.3f} |"))
  if not side_by_side:
    for args in grid:  # one setting at a time: compile, time, print
      s = Setting.build(*args)
      s.run(_SECONDS.value)
      print(row(s), flush=True)


if __name__ == "__main__":
  app.run(main)
