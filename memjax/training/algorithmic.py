"""Trainer for the NTM paper's algorithmic tasks: NTM, DNC and LSTM models.

`train_and_evaluate(config, workdir)` trains until `num_steps` or until the
moving average of bit errors per sequence (over the last `error_window`
sequences) drops below `stop_at_bit_errors` (and `steps_after_convergence`
more), then evaluates on longer sequences than it trained on, prints a table
and writes plots. Past the criterion the run also keeps, of the parameters
at its log steps that still met it (moving average and the mean of the last
`steps_per_call` steps below the criterion), those with the fewest bit errors
on held-out sequences of the longest trained length, and evaluates whichever
of them and the final model is better there (`select_result`;
`summary["params_step"]` says which).

Exact resume. Batch `s` is drawn from `rng_for(seed, s)` (NumPy, on the
host), the training state (parameters, optimizer state, step, the moving
window of errors) is checkpointed every `checkpoint_every` steps and when the
process gets SIGTERM or Ctrl-C, and a rerun on the same workdir restores the
newest good checkpoint and truncates metrics.jsonl to it. The resumed run
then computes the same numbers, bit for bit on a CPU, as a run that never
stopped.

Speed. One jitted call runs `steps_per_call` training steps (a `lax.scan`
over steps around the `lax.scan` over time), all batches share one padded
shape (no recompiles), each time step is rematerialised in the backward pass,
and the next batches are generated on the host while the device computes.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import time
from typing import Any
from typing import NamedTuple

import jax
import jax.extend.backend as jax_backend
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from memjax import _checks
from memjax import xla
from memjax.nn import dnc
from memjax.nn import lstm
from memjax.nn import ntm
from memjax.nn import sequence
from memjax.tasks import algorithmic as tasks
from memjax.training import checkpoint
from memjax.training import metrics
from memjax.training import plotting

MODELS = ("ntm", "dnc", "lstm")
OPTIMIZERS = ("adam", "rmsprop")
# XLA:CPU's YNN library fusions turn the small reductions of the memory
# write's backward pass into kernels ~100x slower than the plain emitter. YNN
# for single matrix products only ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT") trains
# the NTM 1.07x faster, side by side, but its different rounding changed the
# 5-seed copy results: seed 2 collapsed in its last post-convergence steps (the
# validation-kept model now covers that) and seed 1 copies lengths 60-100 with
# 4-69 bit errors per sequence (none without). So it stays off.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _process_start_time() -> float:
  """Wall-clock time at which this process was launched (Linux), else now."""
  try:
    with open("/proc/self/stat") as f:
      start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError):
    return time.time()


def compiler_options() -> dict[str, str] | None:
  """The XLA options of the trainer's jitted functions: `CPU_COMPILER_OPTIONS` on a CPU.

  None on other backends, or when this XLA rejects them (`memjax.xla.cpu_options`).
  """
  return xla.cpu_options(CPU_COMPILER_OPTIONS)


# ----------------------------------------------------------------------------- config

def default_config() -> ml_collections.ConfigDict:
  """Defaults: NTM (LSTM controller, 128 x 20 memory) on copy 1-20, Adam, stop at 0.1 bit errors."""
  c = ml_collections.ConfigDict()
  c.trainer = "algorithmic"
  c.seed = 0
  c.task = ml_collections.ConfigDict({"name": "copy", "bits": 8, "min_length": 1,
                                      "max_length": 20})
  c.model = ml_collections.ConfigDict({
      "name": "ntm", "memory_size": 128, "word_size": 20, "num_read_heads": 1,
      "num_write_heads": 1, "shift_range": 1, "controller": "lstm", "controller_size": 100,
      "memory_init": "constant", "clip_value": 20.0})
  # lr_decay_every > 0: the learning rate is multiplied by lr_decay_rate ** (step /
  # lr_decay_every), but never by less than lr_floor (0: constant learning rate).
  c.optimizer = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3,
                                           "grad_clip_norm": 10.0, "lr_decay_every": 0,
                                           "lr_decay_rate": 0.5, "lr_floor": 0.1})
  c.batch_size = 16
  c.num_steps = 20000            # upper bound; the stopping criterion usually ends sooner
  c.steps_per_call = 25          # training steps per jitted call
  c.log_every = 100
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.error_window = 1000          # sequences in the moving average of bit errors
  # Curriculum over the task's max_length (tasks with one: copy, repeat copy). start=0: off.
  # Otherwise training starts at max_length=start and adds `increment` whenever the mean bit
  # errors of the last `window` sequences at the current length drop below `threshold`; the
  # stopping criterion is only tested at the task's own max_length.
  c.curriculum = ml_collections.ConfigDict({"start": 0, "increment": 5, "threshold": 1.0,
                                            "window": 400})
  # Loss-spike guard (every=0: off; see `spike_detected`). Every `every` steps, while the
  # moving average of bit errors is the lowest seen at such a check, the parameters,
  # optimizer state and error window are kept as a snapshot. When the moving average later
  # exceeds max(factor * the snapshot's, the snapshot's + margin), or the loss is not
  # finite, training goes back to the snapshot with its learning rate multiplied by
  # lr_scale and goes on with fresh batches, at most max_rollbacks times. Only before the
  # stopping criterion is met; not with a curriculum.
  c.spike_guard = ml_collections.ConfigDict({"every": 0, "factor": 2.0, "margin": 2.0,
                                             "lr_scale": 0.5, "max_rollbacks": 8})
  c.stop_at_bit_errors = 0.1     # None: train for num_steps
  c.steps_after_convergence = 0  # keep training this many steps once below stop_at_bit_errors,
  c.lr_after_convergence = 0.1   # with the learning rate multiplied by this (1.0: keep it)
  c.remat = True
  c.hoist = True                 # weight gradients of the linear layers outside the time loop
  c.scan_groups = 1              # independent scans over each device's batch part, one after
                                 # another, each stopping after its own last scored step
  c.sort_by_length = False       # order each batch by length first (`length_order`), so each
                                 # scan group holds sequences of similar lengths
  c.cpu_devices = 1              # >1: split each batch across that many CPU devices (cores)
  c.eval_lengths = (20, 40, 60, 80, 100)  # (): no generalisation table
  c.eval_batch_size = 32
  c.eval_batches = 2
  c.plots = True
  return c


def shrink_for_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
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



def _positive_int(config, name: str) -> None:
  _checks.integer(config.get(name), name)


def make_task(config: ml_collections.ConfigDict):
  """The task described by `config.task` (its `name` and the task's own options)."""
  options = dict(config.task)
  name = options.pop("name", None)
  if name not in tasks.TASKS:
    raise ValueError(f"task.name must be one of {tasks.TASKS}; got {name!r}")
  try:
    return tasks.make_task(name, **options)
  except TypeError as e:
    raise ValueError(f"bad option for task {name!r}: {e}") from e


def _model_options(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  options = dict(config.model)
  name = options.pop("name", None)
  if name not in MODELS:
    raise ValueError(f"model.name must be one of {MODELS}; got {name!r}")
  return name, options


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with a one-line message on the first bad value; compiles nothing."""
  task = make_task(config)
  name, options = _model_options(config)
  if name in ("ntm", "dnc"):
    defaults = {"memory_size": 128, "word_size": 20, "num_read_heads": 1, "num_write_heads": 1,
                "controller_size": 100, "memory_init": "constant", "controller": "lstm"}
    allowed = set(defaults) | {"shift_range", "clip_value", "fused"}
    if name == "dnc":
      allowed.discard("fused")
      allowed.discard("shift_range")
      allowed.discard("num_write_heads")
    unknown = set(options) - allowed
    if unknown:
      raise ValueError(f"unknown option(s) for model {name!r}: {sorted(unknown)}")
    merged = {**defaults, **options}
    ntm.validate_memory_options(
        merged["memory_size"], merged["word_size"], merged["num_read_heads"],
        merged["num_write_heads"], merged["controller_size"], merged["memory_init"],
        merged["controller"], merged.get("shift_range", 1) if name == "ntm" else None)
  else:
    unknown = set(options) - {"hidden_size", "num_layers", "clip_value"}
    if unknown:
      raise ValueError(f"unknown option(s) for model 'lstm': {sorted(unknown)}")
    for key in ("hidden_size", "num_layers"):
      _checks.integer(options.get(key, 1), f"model.{key}")
  clip = options.get("clip_value", 20.0)
  if clip is not None and not clip > 0:
    raise ValueError(f"model.clip_value must be > 0 or None; got {clip!r}")
  for key in ("batch_size", "num_steps", "steps_per_call", "log_every", "checkpoint_every",
              "keep_checkpoints", "error_window", "eval_batch_size", "eval_batches"):
    _positive_int(config, key)
  cpu_devices = config.get("cpu_devices", 1)
  if (not _checks.is_integer(cpu_devices) or cpu_devices < 1
      or config.batch_size % cpu_devices):
    raise ValueError(f"cpu_devices must be an integer >= 1 dividing batch_size="
                     f"{config.batch_size}; got {cpu_devices!r}")
  groups = config.get("scan_groups", 1)
  if (not _checks.is_integer(groups) or groups < 1
      or config.batch_size % (groups * cpu_devices)):
    raise ValueError(f"scan_groups must be an integer >= 1 such that cpu_devices x scan_groups "
                     f"divides batch_size={config.batch_size}; got scan_groups={groups!r} with "
                     f"cpu_devices={cpu_devices}")
  if not isinstance(config.get("sort_by_length", False), bool):
    raise ValueError(f"sort_by_length must be True or False; got "
                     f"{config.get('sort_by_length')!r}")
  # Absent: 0, as `train_and_evaluate` reads it.
  after = _checks.integer(config.get("steps_after_convergence", 0), "steps_after_convergence",
                          low=0)
  # A number, never None: the trainer multiplies the learning rate by it (None would make
  # it NaN); 1.0 keeps the learning rate, and is what an absent field means.
  _checks.number(config.get("lr_after_convergence", 1.0), "lr_after_convergence", 0,
                 open_low=True)
  for key, value in (("num_steps", config.num_steps), ("log_every", config.log_every),
                     ("checkpoint_every", config.checkpoint_every),
                     ("steps_after_convergence", after)):
    if value % config.steps_per_call:
      raise ValueError(f"{key}={value} must be a multiple of "
                       f"steps_per_call={config.steps_per_call}")
  if config.optimizer.name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}; got "
                     f"{config.optimizer.name!r}")
  if not config.optimizer.learning_rate > 0:
    raise ValueError(f"optimizer.learning_rate must be > 0; got "
                     f"{config.optimizer.learning_rate!r}")
  every = config.optimizer.get("lr_decay_every", 0)
  if not _checks.is_integer(every) or every < 0:
    raise ValueError(f"optimizer.lr_decay_every must be an integer >= 0 (0: constant learning "
                     f"rate); got {every!r}")
  if every and not 0 < config.optimizer.lr_decay_rate <= 1:
    raise ValueError(f"optimizer.lr_decay_rate must be in (0, 1]; got "
                     f"{config.optimizer.lr_decay_rate!r}")
  if every and not 0 <= config.optimizer.lr_floor <= 1:
    raise ValueError(f"optimizer.lr_floor must be in [0, 1]; got {config.optimizer.lr_floor!r}")
  clip_norm = config.optimizer.get("grad_clip_norm")
  if clip_norm is not None and not clip_norm > 0:
    raise ValueError(f"optimizer.grad_clip_norm must be > 0 or None; got {clip_norm!r}")
  stop = config.get("stop_at_bit_errors")
  if stop is not None and not stop >= 0:
    raise ValueError(f"stop_at_bit_errors must be >= 0 or None; got {stop!r}")
  for length in config.eval_lengths:  # () is fine: no generalisation table
    if not _checks.is_integer(length) or length < 1:
      raise ValueError(f"eval_lengths must hold integers >= 1; got {list(config.eval_lengths)}")
  cur = config.get("curriculum")
  if cur is not None and not _checks.is_integer(cur.start):
    raise ValueError(f"curriculum.start must be an integer (0: off); got {cur.start!r}")
  if cur is not None and cur.start:
    top = getattr(task, "max_length", None)
    if top is None:
      raise ValueError(f"curriculum.start={cur.start} needs a task with a max_length; "
                       f"{config.task.name!r} has none")
    if not 1 <= cur.start <= top:
      raise ValueError(f"curriculum.start must be 0 (off) or an integer in [1, {top}]; "
                       f"got {cur.start!r}")
    _checks.integer(cur.increment, "curriculum.increment")
    if not _checks.is_integer(cur.window) or not 1 <= cur.window <= config.error_window:
      raise ValueError(f"curriculum.window must be an integer in [1, error_window="
                       f"{config.error_window}]; got {cur.window!r}")
    if not cur.threshold > 0:
      raise ValueError(f"curriculum.threshold must be > 0; got {cur.threshold!r}")
  guard = config.get("spike_guard")
  if guard is not None:
    _validate_spike_guard(config, guard)
  if not _checks.is_integer(config.seed):
    raise ValueError(f"seed must be an integer; got {config.seed!r}")
  del task


def _validate_spike_guard(config: ml_collections.ConfigDict, guard) -> None:
  every = guard.every
  if not _checks.is_integer(every) or every < 0:
    raise ValueError(f"spike_guard.every must be an integer >= 0 (0: off); got {every!r}")
  if not every:
    return
  if every % config.steps_per_call:
    raise ValueError(f"spike_guard.every={every} must be a multiple of "
                     f"steps_per_call={config.steps_per_call}")
  cur = config.get("curriculum")
  if cur is not None and cur.start:
    raise ValueError("spike_guard and curriculum cannot be used together (a rollback "
                     "would cross curriculum levels)")
  if not guard.factor >= 1:
    raise ValueError(f"spike_guard.factor must be >= 1; got {guard.factor!r}")
  if not guard.margin >= 0:
    raise ValueError(f"spike_guard.margin must be >= 0; got {guard.margin!r}")
  if not 0 < guard.lr_scale <= 1:
    raise ValueError(f"spike_guard.lr_scale must be in (0, 1]; got {guard.lr_scale!r}")
  rollbacks = guard.max_rollbacks
  if not _checks.is_integer(rollbacks) or rollbacks < 0:
    raise ValueError(f"spike_guard.max_rollbacks must be an integer >= 0; got {rollbacks!r}")


def spike_detected(average: float, snapshot_average: float, factor: float,
                   margin: float) -> bool:
  """Whether a moving average of bit errors counts as a spike against the snapshot's.

  True when `average` exceeds both `factor` times the snapshot's average and
  the snapshot's average plus `margin` (so a small absolute rise on a nearly
  solved task is not a spike), or is not finite.
  """
  if not np.isfinite(average):
    return True
  return bool(average > max(factor * snapshot_average, snapshot_average + margin))


# ----------------------------------------------------------------------------- model


def build_cell(config: ml_collections.ConfigDict, task, rngs: nnx.Rngs) -> nnx.RNNCellBase:
  """The NTM, DNC or LSTM cell that `config.model` describes, sized for `task`."""
  name, options = _model_options(config)
  cls = {"ntm": ntm.NTMCell, "dnc": dnc.DNCCell, "lstm": lstm.LSTMCell}[name]
  return cls(task.input_size, task.output_size, rngs=rngs, **options)


def learning_rate_scale(config: ml_collections.ConfigDict):
  """The factor on the learning rate at each step (a function of the step count), or None.

  max(lr_decay_rate ** (count / lr_decay_every), lr_floor) when
  `optimizer.lr_decay_every` > 0; None (constant learning rate) otherwise.
  """
  opt = config.optimizer
  every = opt.get("lr_decay_every", 0)
  if not every:
    return None
  rate, floor = float(opt.lr_decay_rate), float(opt.lr_floor)
  return lambda count: jnp.maximum(rate ** (count / every), floor)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam or RMSProp (with momentum), after clipping by global norm; optionally decayed.

  The decay (`learning_rate_scale`) scales the updates after the optimizer,
  which for these optimizers is the same as scaling the learning rate; the
  injected learning rate itself stays what `steps_after_convergence` scales.
  """
  opt = config.optimizer
  # The learning rate lives in the optimizer state (so it is checkpointed and can be
  # lowered after convergence, see `steps_after_convergence`).
  if opt.name == "adam":
    base = optax.inject_hyperparams(optax.adam)(learning_rate=opt.learning_rate)
  else:
    base = optax.inject_hyperparams(optax.rmsprop)(
        learning_rate=opt.learning_rate, decay=opt.get("decay", 0.95),
        momentum=opt.get("momentum", 0.9), eps=opt.get("eps", 1e-6), centered=True)
  schedule = learning_rate_scale(config)
  if schedule is not None:
    base = optax.chain(base, optax.scale_by_schedule(schedule))
  if opt.get("grad_clip_norm") is None:
    return base
  return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), base)


def sequence_loss_terms(logits: jax.Array, batch: tasks.Batch) -> tuple[jax.Array, jax.Array]:
  """(summed masked sigmoid cross-entropy, number of scored bits) of a batch."""
  xent = optax.sigmoid_binary_cross_entropy(logits, batch.targets)
  mask = batch.mask[..., None]
  return jnp.sum(xent * mask), jnp.sum(mask) * logits.shape[-1]


def sequence_loss(logits: jax.Array, batch: tasks.Batch) -> tuple[jax.Array, jax.Array]:
  """Masked sigmoid cross-entropy (nats per scored bit) and bit errors per sequence [B]."""
  xent, scored_bits = sequence_loss_terms(logits, batch)
  loss = xent / jnp.maximum(scored_bits, 1.0)
  return loss, tasks.bit_errors(logits, batch.targets, batch.mask)


class Batches(NamedTuple):
  """What the jitted train and eval functions take: task batches and their memory keys.

  Attributes:
    data: a `tasks.Batch` ([B, T, ...]; stacked training batches [count, B, T, ...]).
    memory_keys: raw uint32 PRNG key data [..., B, 2], one key per sequence, that
      draws its initial memory for models with memory_init='random'; else None.
  """
  data: tasks.Batch
  memory_keys: np.ndarray | None = None


# Memory keys come from generators of their own: rng_for's (seed, stream, step) plus this.
_MEMORY_KEY_TAG = 1


def memory_keys(config: ml_collections.ConfigDict, stream: int, step: int,
                batch_size: int) -> np.ndarray | None:
  """The memory keys of batch `step` of `stream` ([B, 2] uint32), or None if not needed.

  Needed only with model.memory_init='random'. A pure function of its
  arguments (so resume is exact) and one key per sequence (so a sequence's
  memory does not depend on how the batch is split across devices).
  """
  if config.model.get("memory_init") != "random":
    return None
  rng = np.random.default_rng([int(config.seed), int(stream), int(step), _MEMORY_KEY_TAG])
  return rng.integers(0, 1 << 32, size=(batch_size, 2), dtype=np.uint32)


def _initial_carry(cell, inputs: jax.Array, keys):
  """None (the cell's own initial state) or, given memory keys, one memory per sequence."""
  if keys is None:
    return None
  return cell.initialize_carry((inputs.shape[0], inputs.shape[-1]), rngs=keys)


@dataclasses.dataclass
class Experiment:
  """Everything a run builds from its config: task, model split into graph and state, steps."""
  config: ml_collections.ConfigDict
  task: Any
  graphdef: Any
  params: Any
  optimizer: optax.GradientTransformation
  train_chunk: Any
  evaluate: Any
  time_steps: int
  eval_time_steps: int
  place: Any = None  # puts parameters/optimizer state where train_chunk expects them

  def cell(self, params=None) -> nnx.RNNCellBase:
    return nnx.merge(self.graphdef, self.params if params is None else params)

  def batches(self, first_step: int, count: int, max_length: int | None = None) -> Batches:
    """Training batches `first_step .. first_step + count - 1`, stacked: [count, B, T, ...].

    `max_length` (curriculum) draws from the task with that max_length instead,
    padded to the same T.
    """
    task = self.task
    if max_length and max_length != getattr(task, "max_length", max_length):
      task = dataclasses.replace(task, max_length=max_length,
                                 min_length=min(task.min_length, max_length))
    steps = range(first_step, first_step + count)
    parts = [task.sample(tasks.rng_for(self.config.seed, s), self.config.batch_size,
                         time_steps=self.time_steps) for s in steps]
    keys = [memory_keys(self.config, 0, s, self.config.batch_size) for s in steps]
    if self.config.get("sort_by_length", False):
      # By the configured devices, not those present: the data stream is a function of
      # the config alone (a run resumed on a machine with fewer devices sees the same).
      devices = self.config.get("cpu_devices", 1)
      groups = self.config.get("scan_groups", 1)
      order = [length_order(p.mask, devices, groups) for p in parts]
      parts = [tasks.Batch(*(a[o] for a in p)) for p, o in zip(parts, order)]
      keys = [k if k is None else k[o] for k, o in zip(keys, order)]
    return Batches(tasks.Batch(*(np.stack(x) for x in zip(*parts))),
                   None if keys[0] is None else np.stack(keys))


def length_order(mask: np.ndarray, devices: int, groups: int) -> np.ndarray:
  """The order of a batch's sequences that `sort_by_length` trains them in.

  A training step splits the batch into `devices` contiguous parts, one per
  device, and each part into `groups` contiguous scan groups whose time loops
  stop after their own last scored step; the step ends when the slowest
  device has run all its groups. So the sequences are sorted by their last
  scored step (longest first, ties in batch order) and cut into
  devices x groups blocks of equal size, and the blocks are dealt to the
  devices in a snake (0, 1, ..., D-1, D-1, ..., 1, 0, 0, 1, ...): every
  group holds sequences of similar lengths and every device gets a similar
  total of loop steps. The loss and gradients are sums over sequences, so
  the order changes them only by float rounding.

  Args:
    mask: [B, T] (or [B, T, ...]) the batch's scored-step mask.
    devices: D, the devices the batch is split across.
    groups: G, scan groups per device; D x G must divide B.

  Returns:
    [B] a permutation: the batch's row i is the original row `order[i]`.
  """
  b = mask.shape[0]
  if b % (devices * groups):
    raise ValueError(f"devices x groups = {devices} x {groups} must divide the batch size {b}")
  scored = mask.reshape(b, mask.shape[1], -1).max(axis=-1) > 0
  last = np.where(scored.any(axis=1), scored.shape[1] - np.argmax(scored[:, ::-1], axis=1), 0)
  by_length = np.argsort(-last, kind="stable")
  blocks = np.split(by_length, devices * groups)
  per_device = [[] for _ in range(devices)]
  for i, block in enumerate(blocks):
    lap, pos = divmod(i, devices)
    per_device[pos if lap % 2 == 0 else devices - 1 - pos].append(block)
  return np.concatenate([np.concatenate(x) for x in per_device])


def _psum_flat(tree: Any, axis_name: str) -> Any:
  """`jax.lax.psum` of a tree of arrays as one all-reduce of one flat vector per dtype.

  XLA:CPU's all-reduce of a tuple of arrays meets the other devices once per
  array; with one vector it meets them once.
  """
  leaves, treedef = jax.tree.flatten(tree)
  out = [None] * len(leaves)
  for dtype in sorted({x.dtype for x in leaves}, key=str):
    idx = [i for i, x in enumerate(leaves) if x.dtype == dtype]
    flat = jax.lax.psum(jnp.concatenate([jnp.ravel(leaves[i]) for i in idx]), axis_name)
    parts = jnp.split(flat, np.cumsum([leaves[i].size for i in idx])[:-1])
    for i, part in zip(idx, parts):
      out[i] = part.reshape(leaves[i].shape)
  return jax.tree.unflatten(treedef, out)


def use_cpu_devices(count: int) -> None:
  """Makes JAX show `count` CPU devices (one per core), before any array exists.

  XLA:CPU runs one training step on one core; with several CPU devices the
  trainer splits each batch across them (`config.cpu_devices`).
  `experiments/train.py` sets the count before JAX starts, so this is a
  no-op there; elsewhere (a notebook, a benchmark) the CPU backend is
  re-created, so call this before creating any JAX array. No-op when not on
  a CPU or when there are already enough devices.
  """
  if count <= 1 or jax.default_backend() != "cpu" or jax.device_count() >= count:
    return
  if jax.live_arrays():
    logging.warning("cpu_devices=%d ignored: JAX arrays already exist (call "
                    "use_cpu_devices before creating any)", count)
    return
  jax_backend.clear_backends()
  jax.config.update("jax_num_cpu_devices", count)


def data_parallel_devices(config: ml_collections.ConfigDict) -> list:
  """The devices a training step is split across (`config.cpu_devices` of them, if present)."""
  wanted = int(config.get("cpu_devices", 1))
  devices = jax.devices()[:wanted]
  if len(devices) < 2 or config.batch_size % len(devices):
    return devices[:1]
  return devices


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Builds the task, the model and the jitted train/eval functions of `config`."""
  task = make_task(config)
  cell = build_cell(config, task, nnx.Rngs(config.seed))
  graphdef, params = nnx.split(cell)
  optimizer = make_optimizer(config)
  remat = bool(config.get("remat", True))
  hoist = bool(config.get("hoist", True))
  time_steps = task.time_steps()
  eval_time_steps = max([time_steps] + [task.time_steps(n) for n in config.eval_lengths])

  groups = int(config.get("scan_groups", 1))

  def logits_of(params, batch, keys):
    # With scan_groups > 1 the batch is split into independent scans, which XLA:CPU
    # can run on different cores at once; the arithmetic is unchanged.
    cell = nnx.merge(graphdef, params)
    parts = jnp.split(batch.inputs, groups) if groups > 1 else [batch.inputs]
    carry = _initial_carry(cell, batch.inputs, keys)  # memory_init='random' only
    size = batch.inputs.shape[0] // len(parts)
    carries = [jax.tree.map(lambda a, i=i: a[i * size:(i + 1) * size], carry)
               for i in range(len(parts))]
    # With hoist, each part's time loop stops after that part's last scored step (nothing
    # after it changes the loss), so short batches and parts train faster in the same shape.
    masks = jnp.split(batch.mask, len(parts))
    outputs = []
    for x, c, m in zip(parts, carries, masks):
      steps = None
      if hoist and hasattr(cell, "step_with_deltas"):
        scored = jnp.any(m > 0, axis=0)[::-1]
        steps = scored.shape[0] - jnp.argmax(scored)
      outputs.append(sequence.run_cell(cell, x, initial_carry=c, remat=remat, hoist=hoist,
                                       steps=steps)[1])
    return jnp.concatenate(outputs)

  def loss_fn(params, batch, keys):
    return sequence_loss(logits_of(params, batch, keys), batch)

  def one_step(state, batches):
    params, opt_state = state
    (loss, errors), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *batches)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), (loss, errors)

  def summed_loss_fn(params, batch, keys):
    logits = logits_of(params, batch, keys)
    xent, scored_bits = sequence_loss_terms(logits, batch)
    return xent, (scored_bits, tasks.bit_errors(logits, batch.targets, batch.mask))

  def data_parallel_step(state, batches):
    # One device's slice of the batch (inside shard_map): gradients of its summed loss,
    # then one all-reduce of the gradients, the summed loss and the scored-bit count.
    # The time loop stops after this slice's own last scored step.
    params, opt_state = state
    (xent, (scored_bits, errors)), grads = jax.value_and_grad(
        summed_loss_fn, has_aux=True)(params, *batches)
    grads, xent, scored_bits = _psum_flat((grads, xent, scored_bits), "data")
    scored_bits = jnp.maximum(scored_bits, 1.0)
    grads = jax.tree.map(lambda g: g / scored_bits, grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), (xent / scored_bits, errors)

  def chunk_of(step):
    def chunk(params, opt_state, batches):
      (params, opt_state), (loss, errors) = jax.lax.scan(step, (params, opt_state), batches)
      return params, opt_state, loss, errors
    return chunk

  devices = data_parallel_devices(config)
  shardings = {}
  chunk = chunk_of(one_step)
  place = lambda tree: tree
  if len(devices) > 1:
    # Data parallel over CPU devices (one per core): each trains on its slice of the
    # batch and the gradients are summed across them; parameters and optimizer state
    # are replicated (every device applies the same update).
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    spec = jax.sharding.PartitionSpec
    replicated = jax.sharding.NamedSharding(mesh, spec())
    by_batch = jax.sharding.NamedSharding(mesh, spec(None, "data"))
    # check_vma=False: the cells' scans start from constant carries that become
    # per-device inside the loop; the psum makes every output replicated again.
    chunk = jax.shard_map(chunk_of(data_parallel_step), mesh=mesh,
                          in_specs=(spec(), spec(), spec(None, "data")),
                          out_specs=(spec(), spec(), spec(), spec(None, "data")),
                          check_vma=False)
    shardings = dict(in_shardings=(replicated, replicated, by_batch),
                     out_shardings=(replicated, replicated, replicated, by_batch))
    place = lambda tree: jax.device_put(tree, replicated)  # as train_chunk returns them
  train_chunk = jax.jit(chunk, donate_argnums=(0, 1), compiler_options=compiler_options(),
                        **shardings)

  @functools.partial(jax.jit, compiler_options=compiler_options())
  def evaluate(params, batches):
    batch, keys = batches
    cell = nnx.merge(graphdef, params)
    _, logits, _ = sequence.run_cell(cell, batch.inputs,
                                     initial_carry=_initial_carry(cell, batch.inputs, keys))
    return sequence_loss(logits, batch)[1]

  return Experiment(config, task, graphdef, params, optimizer, train_chunk, evaluate,
                    time_steps, eval_time_steps, place)


# ----------------------------------------------------------------------------- training


def _initial_state(exp: Experiment) -> dict[str, Any]:
  window = exp.config.error_window
  opt_state = exp.optimizer.init(exp.params)
  return {
      "params": exp.params,
      "opt_state": opt_state,
      "step": np.asarray(0, np.int64),
      "recent_errors": np.full((window,), np.nan, np.float32),
      "wall_time": np.asarray(0.0, np.float64),
      "converged_step": np.asarray(-1, np.int64),
      # Of the parameters at log steps past convergence whose moving average, and whose
      # last chunk's mean, met the stopping criterion, those with the fewest bit errors
      # on validation sequences (`validation_errors`; the latest on a tie): the run's
      # result if training past the criterion makes it worse. Their step (-1: none) and
      # validation errors (inf: none).
      "kept_params": exp.params,
      "kept_step": np.asarray(-1, np.int64),
      "kept_validation": np.asarray(np.inf, np.float64),
      # Curriculum: the current max_length, and that of the batches already drawn for the
      # next chunk (decided one chunk earlier); both are the task's max_length when off.
      "level": np.asarray(_curriculum_start(exp), np.int64),
      "upcoming_level": np.asarray(_curriculum_start(exp), np.int64),
      # The spike guard's snapshot (`spike_guard`): parameters, optimizer state, error
      # window, its moving average and its step (-1: none yet); and the rollbacks so far.
      **_no_snapshot(exp.params, opt_state, window),
  }


def _no_snapshot(params, opt_state, window: int) -> dict[str, Any]:
  return {"guard_params": params, "guard_opt_state": opt_state,
          "guard_errors": np.full((window,), np.nan, np.float32),
          "guard_average": np.asarray(np.nan, np.float64),
          "guard_step": np.asarray(-1, np.int64), "rollbacks": np.asarray(0, np.int64)}


KEPT_KEYS = ("kept_params", "kept_step")
GUARD_KEYS = tuple(_no_snapshot(None, None, 1))
VALIDATION_KEYS = ("kept_validation",)
# Keys that older versions of the trainer did not write, newest first: a checkpoint is
# restored with the first template it fits, and `_upgrade_state` fills in the rest.
LEGACY_KEYS = (VALIDATION_KEYS, GUARD_KEYS + VALIDATION_KEYS,
               GUARD_KEYS + KEPT_KEYS + VALIDATION_KEYS)


def _upgrade_state(old: dict[str, Any]) -> dict[str, Any]:
  """A state restored from a checkpoint written by an older trainer (see `LEGACY_KEYS`)."""
  new = dict(old)
  if "kept_params" not in old:
    new.update(kept_params=old["params"], kept_step=np.asarray(-1, np.int64))
  if "guard_params" not in old:
    new.update(_no_snapshot(old["params"], old["opt_state"], len(old["recent_errors"])))
  if "kept_validation" not in old:  # kept by the older rule (the last that met the criterion)
    new.update(kept_validation=np.asarray(np.inf, np.float64))
  return new


def _as_window(values, size: int) -> np.ndarray:
  """The last `size` of `values` as a float32 array, NaN-padded in front."""
  out = np.full((size,), np.nan, np.float32)
  values = list(values)[-size:]
  if values:
    out[-len(values):] = np.asarray(values, np.float32)
  return out


def _learning_rate(opt_state) -> float:
  """The injected learning rate held in `opt_state` (see `_scale_learning_rate`)."""
  found = []

  def visit(state):
    hyper = getattr(state, "hyperparams", None)
    if isinstance(hyper, dict) and "learning_rate" in hyper:
      found.append(float(np.asarray(hyper["learning_rate"])))
    return state

  jax.tree.map(visit, opt_state,
               is_leaf=lambda x: isinstance(getattr(x, "hyperparams", None), dict))
  if not found:
    raise ValueError("the optimizer state holds no injected learning_rate")
  return found[0]


def _copy(tree):
  # train_chunk donates its inputs, so parameters kept past a chunk need their own buffers.
  return jax.tree.map(lambda x: x.copy(), tree)


def _scale_learning_rate(opt_state, factor: float):
  """`opt_state` with the injected learning rate multiplied by `factor`.

  Raises if no state holds an injected learning rate (nothing would change).
  """
  def injected(x) -> bool:
    # optax.inject_hyperparams' state (InjectStatefulHyperparamsState in current optax,
    # InjectHyperparamsState in older ones): a NamedTuple with a `hyperparams` dict.
    return isinstance(getattr(x, "hyperparams", None), dict) and hasattr(x, "_replace")

  found = []

  def scale(state):
    if injected(state) and "learning_rate" in state.hyperparams:
      hyper = dict(state.hyperparams)
      hyper["learning_rate"] = hyper["learning_rate"] * np.float32(factor)
      found.append(True)
      return state._replace(hyperparams=hyper)
    return state

  scaled = jax.tree.map(scale, opt_state, is_leaf=injected)
  if not found:
    raise ValueError("the optimizer state holds no injected learning_rate to scale")
  return scaled


def _curriculum_start(exp: Experiment) -> int:
  cur = exp.config.get("curriculum")
  top = getattr(exp.task, "max_length", 0)
  return int(cur.start) if cur is not None and cur.start else top


# Streams of rng_for: 0 training, 1 + length the evaluation at that length, these two.
VALIDATION_STREAM = 1 << 20
PLOT_STREAM = VALIDATION_STREAM + 1


def validation_errors(exp: Experiment, params) -> tuple[int | None, float]:
  """Mean bit errors per sequence on held-out sequences of the longest trained length.

  Returns (that length, or None for a task of fixed size; the mean). Drawn
  from a stream of their own (`VALIDATION_STREAM`), `eval_batches` batches
  of `eval_batch_size`, so the evaluation table stays an independent test.
  """
  task = exp.task
  longest = next((int(getattr(task, name)) for name in ("max_length", "max_items")
                  if hasattr(task, name)), None)
  return longest, _mean_errors(exp, params, longest, VALIDATION_STREAM)


def select_result(exp: Experiment, params, step: int, kept_params, kept_step: int,
                  kept_value: float | None = None):
  """The run's result: its final parameters, or the kept ones (`kept_step`).

  The kept parameters are the best on `validation_errors` of those that met
  the stopping criterion at a log step past it. When they are not the final
  ones, the two are compared on `validation_errors`; the kept ones are chosen
  only if strictly better there. `kept_value`: their `validation_errors`
  if already known (the trainer keeps it), else they are evaluated here.
  Returns (params, their step, a description of the comparison or None).
  """
  if kept_step < 0 or kept_step == step:
    return params, step, None
  length, final = validation_errors(exp, params)
  kept = validation_errors(exp, kept_params)[1] if kept_value is None else kept_value
  where = f"at length {length}" if length is not None else "on held-out sequences"
  chosen, chosen_step = (kept_params, kept_step) if kept < final else (params, step)
  note = (f"validation {where}: {final:.3f} bit errors per sequence for the final model "
          f"(step {step}), {kept:.3f} for step {kept_step}, the best there of those that met "
          f"the criterion: evaluating step {chosen_step}")
  return chosen, chosen_step, note


def _mean_errors(exp: Experiment, params, length: int | None, stream: int) -> float:
  """Mean bit errors per sequence over `eval_batches` batches of `stream` at `length`."""
  cfg = exp.config
  errors = []
  for i in range(cfg.eval_batches):
    batch = exp.task.sample(tasks.rng_for(cfg.seed, i, stream=stream), cfg.eval_batch_size,
                            length=length, time_steps=exp.eval_time_steps)
    keys = memory_keys(cfg, stream, i, cfg.eval_batch_size)
    errors.append(np.asarray(exp.evaluate(params, Batches(tasks.Batch(*batch), keys))))
  return float(np.mean(np.concatenate(errors)))


def evaluate_lengths(exp: Experiment, params, lengths) -> dict[int, float]:
  """Mean bit errors per sequence at each length (fixed seed, stream 1 + length)."""
  return {int(n): _mean_errors(exp, params, int(n), 1 + int(n)) for n in lengths}


def _plot_example(exp: Experiment, params, workdir: str) -> list[str]:
  """Learning curve, and (NTM/DNC) one sequence's weightings and memory."""
  paths = [plotting.plot_learning_curve(
      os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "learning_curve.png"),
      y=("loss", "bit_errors_per_sequence"), x="sequences",
      title=f"{exp.config.model.name} on {exp.config.task.name}")]
  if exp.config.model.name not in ("ntm", "dnc"):
    return paths
  batch = exp.task.sample(tasks.rng_for(exp.config.seed, 0, stream=PLOT_STREAM), 1)
  cell = exp.cell(params)
  carry = _initial_carry(cell, batch.inputs, memory_keys(exp.config, PLOT_STREAM, 0, 1))
  _, logits, (ww, rw, mem) = sequence.run_cell(
      cell, jnp.asarray(batch.inputs), initial_carry=carry,
      collect=lambda c: (c.write_weights, c.read_weights, c.memory))
  scored = np.nonzero(batch.mask[0])[0]
  steps = int(scored.max()) + 1 if scored.size else batch.mask.shape[1]  # drop the padding
  paths.append(plotting.plot_episode(
      os.path.join(workdir, "episode.png"), inputs=batch.inputs[0, :steps],
      targets=batch.targets[0, :steps], outputs=np.asarray(jax.nn.sigmoid(logits[0, :steps])),
      write_weights=np.asarray(ww[:steps, 0]), read_weights=np.asarray(rw[:steps, 0]),
      memory=np.asarray(mem[steps - 1, 0]),
      title=f"{exp.config.model.name} on {exp.config.task.name}: one sequence"))
  return paths


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds a checkpoint), evaluates, plots.

  Returns:
    A summary: final step, whether and when the stopping criterion was met,
    the moving-average bit errors and the evaluation table.
  """
  launched = _process_start_time()
  validate_config(config)
  use_cpu_devices(int(config.get("cpu_devices", 1)))
  os.makedirs(workdir, exist_ok=True)
  exp = build(config)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=config.keep_checkpoints)
  state = _initial_state(exp)
  fallbacks = [({k: v for k, v in state.items() if k not in missing}, _upgrade_state)
               for missing in LEGACY_KEYS]
  restored = ckpt.restore_latest(state, fallbacks=fallbacks)
  previous_wall = 0.0
  if restored is not None:
    _, state = restored
    previous_wall = float(state["wall_time"])
    logging.info("resuming at step %d", int(state["step"]))
  step = int(state["step"])
  writer = metrics.MetricWriter(os.path.join(workdir, "metrics.jsonl"),
                                resume_step=step if restored is not None else 0)
  params, opt_state = exp.place((state["params"], state["opt_state"]))
  window = collections.deque((e for e in state["recent_errors"] if np.isfinite(e)),
                             maxlen=config.error_window)
  converged_step = int(state["converged_step"])
  kept_params, kept_step = _copy(exp.place(state["kept_params"])), int(state["kept_step"])
  kept_validation = float(state["kept_validation"])
  level, fed_level = int(state["level"]), int(state["upcoming_level"])
  guard = config.get("spike_guard")
  guard_every = int(guard.every) if guard is not None else 0
  guard_params = _copy(exp.place(state["guard_params"]))
  guard_opt_state = _copy(exp.place(state["guard_opt_state"]))
  guard_errors = [e for e in state["guard_errors"] if np.isfinite(e)]
  guard_average, guard_step = float(state["guard_average"]), int(state["guard_step"])
  rollbacks = int(state["rollbacks"])
  top = getattr(exp.task, "max_length", 0)
  cur = config.get("curriculum")
  curriculum = cur is not None and bool(cur.start)
  after = int(config.get("steps_after_convergence", 0))
  end_step = lambda: (config.num_steps if converged_step < 0
                      else min(config.num_steps, converged_step + after))
  converged_wall = None
  b, k = config.batch_size, config.steps_per_call
  stop_at = config.get("stop_at_bit_errors")
  wall = lambda: previous_wall + time.time() - launched

  def snapshot(at_step):
    return {"params": params, "opt_state": opt_state, "step": np.asarray(at_step, np.int64),
            "recent_errors": _as_window(window, config.error_window),
            "wall_time": np.asarray(wall(), np.float64),
            "converged_step": np.asarray(converged_step, np.int64),
            "kept_params": kept_params, "kept_step": np.asarray(kept_step, np.int64),
            "kept_validation": np.asarray(kept_validation, np.float64),
            "level": np.asarray(level, np.int64), "upcoming_level": np.asarray(fed_level, np.int64),
            "guard_params": guard_params, "guard_opt_state": guard_opt_state,
            "guard_errors": _as_window(guard_errors, config.error_window),
            "guard_average": np.asarray(guard_average, np.float64),
            "guard_step": np.asarray(guard_step, np.int64),
            "rollbacks": np.asarray(rollbacks, np.int64)}

  progress = metrics.Progress(end_step(), step,
                              may_stop_early=stop_at is not None and converged_step < 0)
  losses = []
  stopped_by_signal = None
  with checkpoint.GracefulStop() as stop:
    upcoming = exp.batches(step, k, fed_level) if step < end_step() else None
    while upcoming is not None:
      params, opt_state, loss, errors = exp.train_chunk(params, opt_state, upcoming)
      step += k
      done = step >= end_step()
      chunk_level, fed_level = fed_level, level
      upcoming = None if done else exp.batches(step, k, level)  # overlaps with the device's work
      loss, errors = np.asarray(loss), np.asarray(errors)
      losses.extend(loss.tolist())
      if chunk_level == level:  # errors of a chunk drawn before the last level change: dropped
        window.extend(errors.reshape(-1).tolist())
      average = float(np.mean(window if window else errors))
      full = len(window) == config.error_window
      if (curriculum and level < top and len(window) >= cur.window
          and np.mean(list(window)[-cur.window:]) < cur.threshold):
        level = min(level + cur.increment, top)
        window.clear()
        logging.info("curriculum: max_length %d from step %d", level, step)
      if (converged_step < 0 and stop_at is not None and full and average < stop_at
          and level == top):
        converged_step, converged_wall = step, wall()
        progress.set_total(end_step())
        if step >= end_step():
          upcoming = None
        else:
          opt_state = exp.place(_scale_learning_rate(opt_state,
                                                     config.get("lr_after_convergence", 1.0)))
      finite = bool(np.all(np.isfinite(loss)))
      guarding = guard_every > 0 and converged_step < 0 and upcoming is not None
      if (guarding and guard_step >= 0 and rollbacks < guard.max_rollbacks
          and (not finite or (full and spike_detected(average, guard_average, guard.factor,
                                                      guard.margin)))):
        # Back to the snapshot, at a lower learning rate; the snapshot takes that rate too,
        # so a second spike lowers it again. The data stream goes on (no batch is reused).
        rollbacks += 1
        guard_opt_state = exp.place(_scale_learning_rate(guard_opt_state, guard.lr_scale))
        params, opt_state = _copy(guard_params), _copy(guard_opt_state)
        seen = "a non-finite loss" if not finite else f"{average:.3f} bit errors per sequence"
        window = collections.deque(guard_errors, maxlen=config.error_window)
        rate = _learning_rate(opt_state)
        logging.warning("spike guard: %s at step %d against %.3f at step %d; rolled back to "
                        "step %d's parameters with base learning rate %.3g (rollback %d of at most "
                        "%d)", seen, step, guard_average, guard_step, guard_step, rate,
                        rollbacks, guard.max_rollbacks)
        writer.write(step, rollback_to=guard_step, bit_errors_per_sequence=average,
                     learning_rate=rate, rollbacks=rollbacks)
        average = guard_average
      elif not finite:
        logging.error("non-finite loss at step %d; stopping", step)
        upcoming = None
      elif (guarding and full and step % guard_every == 0
            and not (guard_step >= 0 and average > guard_average)):
        guard_params, guard_opt_state = _copy(params), _copy(opt_state)
        guard_errors, guard_average, guard_step = list(window), average, step
      elif (converged_step >= 0 and full and average < stop_at and level == top
            and chunk_level == level and float(np.mean(errors)) < stop_at
            and (step % config.log_every == 0 or step >= end_step())):
        # Good over the whole window and over this chunk alone: the moving average lags by
        # a window's worth of steps, so a model that has begun to collapse can still meet
        # it; and one that meets both can already fail on the longest trained sequences,
        # which the validation sequences are.
        _, value = validation_errors(exp, params)
        if value <= kept_validation:
          kept_params, kept_step, kept_validation = _copy(params), step, value
      if step % config.log_every == 0 or upcoming is None or converged_step == step:
        extra = {"max_length": chunk_level} if curriculum else {}
        row = writer.write(step, sequences=step * b, wall_time=wall(),
                           loss=float(np.mean(losses)), bit_errors_per_sequence=average, **extra,
                           **({"converged": True} if converged_step == step else {}))
        progress.log(step, loss=row["loss"], bit_errors=average)
        losses = []
      if step % config.checkpoint_every == 0 or upcoming is None or stop.requested:
        ckpt.save(step, snapshot(step))
      if stop.requested and upcoming is not None:
        stopped_by_signal = stop.requested
        break
  summary: dict[str, Any] = {"step": step, "converged_step": converged_step,
                             "bit_errors_per_sequence": float(np.mean(window)) if window
                             else float("nan"), "wall_time": wall(),
                             "params_step": step, "rollbacks": rollbacks}
  if rollbacks:
    print(f"spike guard: rolled back {rollbacks} time(s); base learning rate now "
          f"{_learning_rate(opt_state):.3g}", flush=True)
  if converged_step >= 0:
    when = ("earlier run" if converged_wall is None else
            f"{converged_wall:.1f} s after launch")
    print(f"converged at step {converged_step} ({converged_step * b} sequences, "
          f"{when}): below {stop_at} bit errors per sequence", flush=True)
  print(f"final bit errors per sequence (moving average over the last {len(window)} "
        f"sequences): {summary['bit_errors_per_sequence']:.3f} at step {step}", flush=True)
  if stopped_by_signal is not None:
    print(f"stopped at step {step} by signal {stopped_by_signal}; checkpoint saved, run the "
          "same command again to resume", flush=True)
    ckpt.close()
    summary["stopped"] = True
    return summary
  ckpt.close()
  known = kept_validation if np.isfinite(kept_validation) else None  # inf: an older checkpoint's
  params, summary["params_step"], note = select_result(exp, params, step, kept_params, kept_step,
                                                       known)
  if note:
    print(note, flush=True)
  lengths = list(config.eval_lengths)
  if lengths:
    results = evaluate_lengths(exp, params, lengths)
    print(f"\ngeneralisation ({config.model.name} on {config.task.name}, trained on "
          f"{_trained_range(exp.task)}, {config.eval_batches * config.eval_batch_size} "
          "sequences per length):")
    print("| length | bit errors per sequence |\n| ---: | ---: |")
    for length, value in results.items():
      print(f"| {length} | {value:.3f} |")
      writer.write(step, eval_length=length, bit_errors_per_sequence=value,
                   params_step=summary["params_step"])
    summary["eval"] = results
  if config.get("plots", True):
    summary["plots"] = _plot_example(exp, params, workdir)
  return summary


def _trained_range(task) -> str:
  if hasattr(task, "min_length"):
    return f"lengths {task.min_length}-{task.max_length}"
  if hasattr(task, "min_items"):
    return f"{task.min_items}-{task.max_items} items"
  return f"{task.num_inputs} inputs"
