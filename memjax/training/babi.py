"""Trains memory networks on bAbI and writes a results table against the paper.

`train_and_evaluate(config, workdir)` trains `MemN2N` (or the key-value form)
on each task in `config.tasks` separately, or on all of them at once with
`config.joint`, and writes:

* `workdir/metrics.jsonl`: one row per epoch (mean training loss and error
  over restarts, best validation error so far);
* `workdir/results/task_NN.json` (or `joint.json`): validation and test error
  of every restart and which one was picked; a rerun on the same workdir
  skips the tasks already there (same config);
* `workdir/babi_table.md` and `babi_table.json`: test error per task next to
  the paper's MemN2N columns, mean error and failed tasks (> 5 % error);
* `workdir/attention_task{N}.png`: the attention of each hop over the story
  for one test question, like Table 1 of the paper.

Restarts train side by side: the parameters of `config.restarts` models are
stacked and every step is `jax.vmap`ped over them, and a whole epoch (a
`lax.scan` over minibatches, then the validation pass) is one jitted call.
Each restart keeps the parameters of its best validation epoch (softmax
phase); the restart with the best validation accuracy (ties: lower
validation loss) is the one reported. Test data are used only to report.
With `config.ensemble` = m > 1 the table also reports an ensemble: the m
restarts best on validation (same ranking), their answer probabilities
averaged; a different system from the paper's single models, in its own
column.

Training follows Sukhbaatar et al. (2015), Sec. 4.2, unless the config says
otherwise: 10 % of the training questions held out, SGD on the batch-summed
cross entropy, batch 32, gradients clipped to norm 40, learning rate 0.01
halved every 25 epochs for 100 epochs, N(0, 0.1) initialisation, linear start
(20 epochs without the hop softmax at learning rate 0.005 first) and random
noise (10 % empty memories in time).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent import futures
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import flags
from absl import logging
from flax import nnx

from memjax import _checks
from memjax.nn import memn2n
from memjax.tasks import babi
from memjax.training.metrics import MetricWriter
from memjax.training.metrics import Progress

FAIL_THRESHOLD = 5.0  # a task "fails" above 5 % test error (the paper's count)

# Test error (%) on bAbI 1k, Sukhbaatar et al. 2015, Table 1 (3 hops, adjacent tying).
PAPER = {
    "BoW": (0.6, 17.6, 71.0, 32.0, 18.3, 8.7, 23.5, 11.4, 21.1, 22.8,
            4.1, 0.3, 10.5, 1.3, 24.3, 52.0, 45.4, 48.1, 89.7, 0.1),
    "PE LS RN": (0.0, 8.3, 40.3, 2.8, 13.1, 7.6, 17.3, 10.0, 13.2, 15.1,
                 0.9, 0.2, 0.4, 1.7, 0.0, 1.3, 51.0, 11.1, 82.8, 0.0),
    "PE LS RN joint": (0.0, 11.4, 21.9, 13.4, 14.4, 2.8, 18.3, 9.3, 1.9, 6.5,
                       0.3, 0.1, 0.2, 6.9, 0.0, 2.7, 40.4, 9.4, 88.0, 0.0),
}

MODELS = ("memn2n", "kv")
OPTIMIZERS = ("sgd", "adam")


# ----------------------------------------------------------------------------- config


def parse_tasks(spec: Any) -> tuple[int, ...]:
  """"1-20", "all", "2,3,16", 5 -> task numbers; ValueError otherwise."""
  text = str(spec).strip().lower()
  if text == "all":
    return tuple(range(1, babi.NUM_TASKS + 1))
  tasks = []
  try:
    for part in text.split(","):
      if "-" in part:
        lo, hi = (int(x) for x in part.split("-"))
        tasks.extend(range(lo, hi + 1))
      else:
        tasks.append(int(part))
  except ValueError:
    raise ValueError(f"config.tasks must look like '3', '1-20', '2,3,16' or 'all'; got "
                     f"{spec!r}") from None
  bad = [t for t in tasks if not 1 <= t <= babi.NUM_TASKS]
  if not tasks or bad:
    raise ValueError(f"config.tasks must name tasks in 1..20; got {spec!r}")
  return tuple(dict.fromkeys(tasks))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field."""
  parse_tasks(config.tasks)
  if config.model not in MODELS:
    raise ValueError(f"config.model must be one of {MODELS}; got {config.model!r}")
  if config.get("restart_batching", "vmap") not in ("vmap", "map"):
    raise ValueError(f"config.restart_batching must be 'vmap' or 'map'; got "
                     f"{config.restart_batching!r}")
  if config.get("embed", "table") not in ("auto", "table", "batch"):
    raise ValueError(f"config.embed must be 'auto', 'table' or 'batch'; got {config.embed!r}")
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f"config.optimizer must be one of {OPTIMIZERS}; got {config.optimizer!r}")
  if config.encoding not in memn2n.ENCODINGS:
    raise ValueError(f"config.encoding must be one of {memn2n.ENCODINGS}; got "
                     f"{config.encoding!r}")
  if config.tying not in memn2n.TYINGS:
    raise ValueError(f"config.tying must be one of {memn2n.TYINGS}; got {config.tying!r}")
  for name in ("embed_dim", "hops", "epochs", "batch_size", "restarts", "memory_size",
               "decay_every", "eval_batch_size"):
    _checks.integer(config[name], f"config.{name}")
  memory_buckets(config.get("memory_buckets", ()), int(config.memory_size))
  ensemble = config.get("ensemble", 1)
  if not _checks.is_integer(ensemble) or not 1 <= ensemble <= config.restarts:
    raise ValueError(f"config.ensemble must be an integer in [1, config.restarts="
                     f"{config.restarts}]; got {ensemble!r}")
  _checks.integer(config.linear_start_epochs, "config.linear_start_epochs", low=0)
  # `train_and_evaluate` starts min(workers, runs) processes when that is > 1, else trains
  # in this process; 0 or less would silently mean 1.
  _checks.integer(config.get("workers", 1), "config.workers", what="1: train in this process")
  if not 0.0 <= float(config.random_noise) < 1.0:
    raise ValueError(f"config.random_noise must be in [0, 1); got {config.random_noise}")
  if not 0.0 < float(config.validation_fraction) < 1.0:
    raise ValueError(f"config.validation_fraction must be in (0, 1); got "
                     f"{config.validation_fraction}")
  for name in ("learning_rate", "linear_start_learning_rate", "max_grad_norm", "init_std"):
    _checks.number(config[name], f"config.{name}", 0, open_low=True)
  _checks.number(config.get("weight_decay", 0.0), "config.weight_decay", 0)
  if not config.data_dir or not os.path.isdir(config.data_dir):
    raise ValueError(f"config.data_dir {config.data_dir!r} is not a directory; set "
                     "--config.data_dir to the 'en' folder of bAbI tasks_1-20_v1-2")


def make_model(config: ml_collections.ConfigDict, vocab_size: int, memory_size: int,
               rngs: nnx.Rngs) -> nnx.Module:
  """The model a config describes."""
  common = dict(hops=int(config.hops), memory_size=memory_size, encoding=config.encoding,
                temporal=bool(config.temporal), attend_empty=bool(config.attend_empty),
                init_std=float(config.init_std), rngs=rngs)
  if config.model == "kv":
    return memn2n.KeyValueMemoryNetwork(vocab_size, int(config.embed_dim), **common)
  return memn2n.MemN2N(vocab_size, int(config.embed_dim), tying=config.tying, **common)


# ----------------------------------------------------------------------------- training


class Split(NamedTuple):
  """One split on the device, stories as indices into the sentence table."""
  story: jax.Array     # [N, M] sentence ids
  mask: jax.Array      # [N, M] bool
  question: jax.Array  # [N, L]
  answer: jax.Array    # [N]
  size: jax.Array      # [N] sentences in memory
  groups: tuple = ()   # per memory bucket: [N_b] the questions whose story fits it
  inverse: Any = None  # [N] position of each question in the concatenated groups


class Arrays(NamedTuple):
  """The data of a run on the device, passed to the jitted functions as arguments."""
  sentences: jax.Array  # [U, L] distinct sentences
  train: Split
  valid: Split
  test: Split


class TrainState(NamedTuple):
  """Everything that changes during training, stacked over R restarts."""
  params: Any
  opt_state: Any
  best_params: Any
  best_accuracy: jax.Array  # [R] validation accuracy of best_params (-1: none yet)
  best_loss: jax.Array      # [R] its validation loss
  key: jax.Array            # [R] PRNG keys


class RunResult(NamedTuple):
  """The outcome of training R restarts on one data set."""
  graphdef: Any
  best_params: Any            # stacked over restarts
  valid_accuracy: np.ndarray  # [R]
  valid_loss: np.ndarray      # [R]
  test_predictions: np.ndarray  # [R, N_test]
  valid_predictions: np.ndarray  # [R, N_valid] of best_params
  chosen: int
  seconds: float
  epochs: int
  test_log_probs: np.ndarray | None = None   # [R, N_test, V] of best_params
  valid_log_probs: np.ndarray | None = None  # [R, N_valid, V]

  @property
  def ranking(self) -> np.ndarray:
    """Restarts best first: higher validation accuracy, then lower validation loss."""
    return np.lexsort((self.valid_loss, -self.valid_accuracy))

  def ensemble_predictions(self, size: int, split: str = "test") -> np.ndarray:
    """[N] answers of the `size` restarts best on validation, probabilities averaged.

    The members are chosen by validation alone; size 1 is the chosen restart.
    """
    log_probs = self.test_log_probs if split == "test" else self.valid_log_probs
    if log_probs is None:
      raise ValueError("this RunResult holds no log-probabilities")
    if not 1 <= size <= log_probs.shape[0]:
      raise ValueError(f"ensemble size must be in [1, {log_probs.shape[0]}]; got {size}")
    members = self.ranking[:size]
    return np.argmax(np.exp(log_probs[members]).mean(axis=0), axis=-1)


def memory_buckets(spec: Any, memory_size: int) -> tuple[int, ...]:
  """The memory bucket sizes of `config.memory_buckets`, capped at and ending with M.

  A question goes to the smallest bucket that holds its story, and a batch
  holds questions of one bucket only, so its memory is cut to that size (the
  empty slots after it still count in the softmax: `MemN2N.answer`'s
  `total_slots`). `()` gives one bucket, the whole memory.
  """
  sizes = []
  for value in spec or ():
    if not _checks.is_integer(value) or value < 1:
      raise ValueError(f"config.memory_buckets must hold integers >= 1; got {tuple(spec)}")
    sizes.append(min(int(value), memory_size))
  return tuple(sorted(set(sizes) | {memory_size}))


def _groups(size: np.ndarray, buckets: tuple[int, ...]) -> list[np.ndarray]:
  """Question indices per bucket (the smallest bucket holding the story)."""
  which = np.searchsorted(np.asarray(buckets), np.maximum(size, 1))
  return [np.flatnonzero(which == b).astype(np.int32) for b in range(len(buckets))]


def _device_split(arrays: babi.BabiArrays, story_index: np.ndarray,
                  buckets: tuple[int, ...]) -> Split:
  groups = _groups(arrays.story_size, buckets)
  inverse = np.argsort(np.concatenate(groups)).astype(np.int32)
  return Split(jnp.asarray(story_index), jnp.asarray(arrays.memory_mask),
               jnp.asarray(arrays.question), jnp.asarray(arrays.answer),
               jnp.asarray(arrays.story_size), tuple(jnp.asarray(g) for g in groups),
               jnp.asarray(inverse))


def _select(mask: jax.Array, new: Any, old: Any) -> Any:
  """Per restart: `new` where mask[r], else `old` (trees stacked over restarts)."""
  def pick(a, b):
    return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)
  return jax.tree.map(pick, new, old)


class Trainer:
  """Jitted training and evaluation of R restarts on one bAbI data set.

  Args:
    config: the experiment config.
    data: the data (one task or several, one vocabulary).
  """

  def __init__(self, config: ml_collections.ConfigDict, data: babi.BabiData):
    self.config = config
    self.data = data
    sentences, (train_ix, valid_ix, test_ix) = babi.sentence_table(data.train, data.valid,
                                                                   data.test)
    self.buckets = memory_buckets(config.get("memory_buckets", ()), data.memory_size)
    # Passed as arguments rather than captured: constants would be baked into
    # the compiled program and slow compilation down.
    split = lambda arrays, index: _device_split(arrays, index, self.buckets)
    self.arrays = Arrays(jnp.asarray(sentences), split(data.train, train_ix),
                         split(data.valid, valid_ix), split(data.test, test_ix))
    self.num_sentences = sentences.shape[0]
    # Embed the distinct sentences once per step, or each batch's own ones.
    embed = config.get("embed", "table")
    self.embed_batch = (embed == "batch" or (
        embed == "auto" and self.num_sentences > int(config.batch_size) * data.memory_size))
    self.memory_size = data.memory_size
    self.vocab_size = len(data.vocab)
    self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: self._model(jax.random.key(0))))
    clip = optax.clip_by_global_norm(float(config.max_grad_norm))
    decay = optax.add_decayed_weights(float(config.get("weight_decay", 0.0)))
    self.tx = optax.chain(decay, clip, optax.scale_by_adam() if config.optimizer == "adam"
                          else optax.identity())
    self._epoch_jit = jax.jit(self._epoch)
    self._predict_jit = jax.jit(lambda params, sentences, split: self._over_restarts(
        lambda p: self._predict(p, sentences, split))(params))

  def epoch_fn(self, state: TrainState, lr: jax.Array, linear: jax.Array):
    """One epoch of every restart, then validation; returns (state, metrics)."""
    return self._epoch_jit(state, lr, linear, self.arrays)

  def predict_fn(self, params, split: Split):
    """(cross entropy, prediction, attention, log-probabilities) [R, N, ...] of stacked
    params on a split."""
    return self._predict_jit(params, self.arrays.sentences, split)

  def _model(self, key: jax.Array) -> nnx.Module:
    return make_model(self.config, self.vocab_size, self.memory_size, nnx.Rngs(params=key))

  def init(self, seed: int) -> TrainState:
    """R freshly initialised restarts."""
    restarts = int(self.config.restarts)
    keys = jax.random.split(jax.random.key(seed), 2 * restarts)
    # Built eagerly one by one: compiling a vmapped initialiser costs more.
    params = [nnx.split(self._model(k))[1] for k in keys[:restarts]]
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *params)
    opt_state = jax.vmap(self.tx.init)(params)
    return TrainState(params, opt_state, params, -jnp.ones((restarts,), jnp.float32),
                      jnp.full((restarts,), jnp.inf, jnp.float32), keys[restarts:])

  # -- one restart --

  def _forward(self, params, sentences, split: Split, idx: jax.Array, time_index, linear,
               slots: int | None = None):
    """The model on questions `idx`, their memories cut to the first `slots` slots."""
    model = nnx.merge(self.graphdef, params)
    slots = self.memory_size if slots is None else slots
    story = split.story[idx][:, :slots]
    if self.embed_batch:
      # Only the sentences of the batch, by gathering word embeddings: cheaper
      # than the whole sentence table when it is large (joint training).
      memory = model.embed_memory(jnp.take(sentences, story, axis=0), dense=False)
    else:
      memory = jnp.take(model.embed_memory(sentences), story, axis=0)
    question = model.embed_question(split.question[idx])
    if time_index is not None:
      time_index = time_index[..., :slots]
    return model.answer(memory, question, split.mask[idx][:, :slots], time=time_index,
                        linear=linear, total_slots=self.memory_size)

  def _loss(self, params, arrays, idx, weight, time_index, linear, slots=None):
    out = self._forward(params, arrays.sentences, arrays.train, idx, time_index, linear, slots)
    answer = arrays.train.answer[idx]
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, answer)
    correct = (jnp.argmax(out.logits, axis=-1) == answer).astype(jnp.float32)
    total = jnp.sum(ce * weight)
    return total, (total, jnp.sum(correct * weight))

  def _schedule(self, key: jax.Array, train: Split) -> tuple[jax.Array, ...]:
    """An epoch of batches over memory buckets, shuffled: (bucket [S], idx [S, B], weight).

    Each bucket's questions are shuffled and cut into batches (the last one
    padded with zero-weight repeats), and the batches of all buckets are
    then shuffled together. Shared by all restarts (a `lax.switch` on the
    bucket then stays one branch under `vmap`).
    """
    batch = int(self.config.batch_size)
    keys = jax.random.split(key, len(self.buckets) + 1)
    buckets, idx, weight = [], [], []
    for b, group in enumerate(train.groups):
      n = group.shape[0]
      if n == 0:
        continue
      steps = -(-n // batch)
      perm = group[jax.random.permutation(keys[b], n)]
      idx.append(jnp.concatenate([perm, perm[jnp.arange(steps * batch - n) % n]]
                                 ).reshape(steps, batch))
      weight.append((jnp.arange(steps * batch) < n).astype(jnp.float32).reshape(steps, batch))
      buckets.append(jnp.full((steps,), b, jnp.int32))
    buckets, idx, weight = (jnp.concatenate(x) for x in (buckets, idx, weight))
    order = jax.random.permutation(keys[-1], buckets.shape[0])
    return buckets[order], idx[order], weight[order]

  def _train_epoch(self, params, opt_state, key, lr, linear, arrays: Arrays, schedule=None):
    n, batch = arrays.train.answer.shape[0], int(self.config.batch_size)
    perm_key, time_key = jax.random.split(key)
    if schedule is None:
      steps = -(-n // batch)
      perm = jax.random.permutation(perm_key, n)
      idx = jnp.concatenate([perm, perm[:steps * batch - n]]).reshape(steps, batch)
      weight = (jnp.arange(steps * batch) < n).astype(jnp.float32).reshape(steps, batch)
      bucket = jnp.zeros((steps,), jnp.int32)
    else:
      bucket, idx, weight = schedule
      steps = idx.shape[0]
    rate = float(self.config.random_noise)
    if rate > 0:  # random noise in time, drawn for the whole epoch at once
      keys = jax.random.split(time_key, steps * batch)
      times = jax.vmap(lambda k, n: memn2n.random_time(k, n, self.memory_size, rate))(
          keys, arrays.train.size[idx.reshape(-1)])
      times = times.reshape(steps, batch, -1)
    else:
      times = jnp.zeros((steps, 0), jnp.int32)

    def train_step(slots, params, opt_state, idx_b, w_b, t_b):
      t_b = t_b if rate > 0 else None
      grads, (loss, correct) = jax.grad(self._loss, has_aux=True)(
          params, arrays, idx_b, w_b, t_b, linear, slots)
      updates, opt_state = self.tx.update(grads, opt_state, params)
      params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
      return (params, opt_state), (loss, correct)

    branches = [lambda *a, size=size: train_step(size, *a) for size in self.buckets]

    def step(carry, xs):
      bucket_b, idx_b, w_b, t_b = xs
      if len(branches) == 1:
        return branches[0](*carry, idx_b, w_b, t_b)
      return jax.lax.switch(bucket_b, branches, *carry, idx_b, w_b, t_b)

    (params, opt_state), (loss, correct) = jax.lax.scan(
        step, (params, opt_state), (bucket, idx, weight, times))
    return params, opt_state, jnp.sum(loss) / n, jnp.sum(correct) / n

  def _predict(self, params, sentences, split: Split):
    """(cross entropy [N], predicted answer [N], attention [N, K, M], log-probabilities
    [N, V]) in chunks, bucket by bucket."""
    parts = []
    for group, size in zip(split.groups, self.buckets):
      n = group.shape[0]
      if n == 0:
        continue
      chunk = min(int(self.config.eval_batch_size), n)
      chunks = -(-n // chunk)
      idx = group[jnp.arange(chunks * chunk) % n].reshape(chunks, chunk)

      def run(i, size=size):
        out = self._forward(params, sentences, split, i, None, False, size)
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, split.answer[i])
        attention = out.attention
        if size < self.memory_size:  # the cut slots are empty: each has an empty slot's weight
          left = (1.0 - jnp.sum(attention, axis=-1, keepdims=True)) / (self.memory_size - size)
          fill = jnp.broadcast_to(left, (*attention.shape[:2], self.memory_size - size))
          attention = jnp.concatenate([attention, fill], axis=-1)
        return (ce, jnp.argmax(out.logits, axis=-1), attention,
                jax.nn.log_softmax(out.logits.astype(jnp.float32), axis=-1))

      outputs = jax.lax.map(run, idx)
      parts.append(tuple(x.reshape((-1, *x.shape[2:]))[:n] for x in outputs))
    if len(parts) == 1:
      return parts[0]
    return tuple(jnp.concatenate(x)[split.inverse] for x in zip(*parts))

  # -- all restarts --

  def _over_restarts(self, fn):
    """`fn` mapped over the leading restart axis of all its arguments."""
    if self.config.get("restart_batching", "vmap") == "vmap":
      return jax.vmap(fn)
    return lambda *args: jax.lax.map(lambda a: fn(*a), args)

  def _epoch(self, state: TrainState, lr: jax.Array, linear: jax.Array, arrays: Arrays):
    keys = jax.vmap(jax.random.split)(state.key)
    schedule = None
    if len(self.buckets) > 1:
      # One batch order for all restarts, from a key none of them uses otherwise.
      schedule = self._schedule(jax.random.fold_in(state.key[0], 1), arrays.train)
    params, opt_state, loss, acc = self._over_restarts(
        lambda *a: self._train_epoch(*a, arrays, schedule))(
            state.params, state.opt_state, keys[:, 0], lr, linear)
    ce, pred, _, _ = self._over_restarts(
        lambda p: self._predict(p, arrays.sentences, arrays.valid))(params)
    valid_loss = jnp.mean(ce, axis=1)
    valid_acc = jnp.mean((pred == arrays.valid.answer[None]).astype(jnp.float32), axis=1)
    better = (~linear) & ((valid_acc > state.best_accuracy) |
                          ((valid_acc == state.best_accuracy) & (valid_loss < state.best_loss)))
    new = TrainState(params, opt_state, _select(better, params, state.best_params),
                     jnp.where(better, valid_acc, state.best_accuracy),
                     jnp.where(better, valid_loss, state.best_loss), keys[:, 1])
    return new, dict(train_loss=loss, train_accuracy=acc, valid_loss=valid_loss,
                     valid_accuracy=valid_acc)

  def fit(self, seed: int, *, on_epoch=None) -> RunResult:
    """Trains all restarts; `on_epoch(epoch, total, metrics)` is called after each epoch."""
    config = self.config
    restarts = int(config.restarts)
    ls_epochs = int(config.linear_start_epochs)
    total = ls_epochs + int(config.epochs)
    start = time.perf_counter()
    state = self.init(seed)
    softmax_epochs = np.zeros((restarts,), np.int64)
    for epoch in range(total):
      linear = np.full((restarts,), epoch < ls_epochs)
      decay = 0.5 ** (softmax_epochs // int(config.decay_every))
      lr = np.where(linear, float(config.linear_start_learning_rate),
                    float(config.learning_rate) * decay).astype(np.float32)
      state, metrics = self.epoch_fn(state, jnp.asarray(lr), jnp.asarray(linear))
      softmax_epochs += ~linear
      if on_epoch is not None:
        on_epoch(epoch + 1, total, jax.device_get(metrics), np.asarray(state.best_accuracy))
    _, test_pred, _, test_logp = self.predict_fn(state.best_params, self.arrays.test)
    _, valid_pred, _, valid_logp = self.predict_fn(state.best_params, self.arrays.valid)
    best_acc, best_loss = np.asarray(state.best_accuracy), np.asarray(state.best_loss)
    chosen = int(np.lexsort((best_loss, -best_acc))[0])
    return RunResult(self.graphdef, state.best_params, best_acc, best_loss,
                     np.asarray(test_pred), np.asarray(valid_pred), chosen,
                     time.perf_counter() - start, total, np.asarray(test_logp),
                     np.asarray(valid_logp))

  def model(self, params: Any, restart: int) -> nnx.Module:
    """The trained model of one restart."""
    return nnx.merge(self.graphdef, jax.tree.map(lambda x: x[restart], params))


# ----------------------------------------------------------------------------- results


def task_errors(data: babi.BabiData, predictions: np.ndarray, split: str = "test"
                ) -> dict[int, float]:
  """Error (%) per task of [N] predictions on a split ("test" or "valid")."""
  arrays = getattr(data, split)
  wrong = predictions != arrays.answer
  return {t: float(100.0 * wrong[arrays.task == t].mean()) for t in data.tasks}


def _config_key(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fields that decide a result (a rerun reuses results with the same key)."""
  skip = {"tasks", "data_dir", "plot", "eval_batch_size"}
  key = {k: v for k, v in sorted(config.to_dict().items()) if k not in skip}
  return json.loads(json.dumps(key))  # as saved: tuples become lists


def _paper_summaries(tasks: list[int]) -> tuple[dict[str, float], dict[str, int]]:
  """Each paper column's mean error and failed-task count over `tasks`."""
  means = {k: float(np.mean([col[t - 1] for t in tasks])) for k, col in PAPER.items()}
  failed = {k: int(sum(col[t - 1] > FAIL_THRESHOLD for t in tasks)) for k, col in PAPER.items()}
  return means, failed


def write_table(results: list[dict[str, Any]], workdir: str, config: ml_collections.ConfigDict,
                seconds: float | None = None) -> str:
  """Writes babi_table.md / babi_table.json from per-task results; returns the markdown."""
  rows = sorted(results, key=lambda r: r["task"])
  ours = [r["test_error"] for r in rows]
  mean = float(np.mean(ours))
  failed = int(sum(e > FAIL_THRESHOLD for e in ours))
  tasks = [r["task"] for r in rows]
  label = "memjax " + ("joint" if config.joint else "per task")
  # The ensemble column: only when every row has one (a config with ensemble > 1).
  ens = all("ensemble_test_error" in r for r in rows) and bool(rows)
  ens_head = f" memjax ensemble of {rows[0]['ensemble_size']} |" if ens else ""
  lines = [
      f"| task | {label} | valid |{ens_head} " +
      " | ".join(f"paper {k}" for k in PAPER) + " |",
      "| --- | ---: | ---: |" + (" ---: |" if ens else "") + " " +
      " | ".join("---:" for _ in PAPER) + " |",
  ]
  for r in rows:
    t = r["task"]
    cell = f" {r['ensemble_test_error']:.1f} |" if ens else ""
    lines.append(f"| {t}: {r['name']} | {r['test_error']:.1f} | {r['valid_error']:.1f} |{cell} " +
                 " | ".join(f"{col[t - 1]:.1f}" for col in PAPER.values()) + " |")
  if ens:
    ens_errors = [r["ensemble_test_error"] for r in rows]
    ens_mean = float(np.mean(ens_errors))
    ens_failed = int(sum(e > FAIL_THRESHOLD for e in ens_errors))
  paper_means, paper_failed = _paper_summaries(tasks)
  lines.append(f"| **mean error** | **{mean:.1f}** | "
               f"{np.mean([r['valid_error'] for r in rows]):.1f} |" +
               (f" **{ens_mean:.1f}** |" if ens else "") + " " +
               " | ".join(f"{v:.1f}" for v in paper_means.values()) + " |")
  lines.append(f"| **failed (> 5 %)** | **{failed}** | |" +
               (f" **{ens_failed}** |" if ens else "") + " " +
               " | ".join(str(v) for v in paper_failed.values()) + " |")
  markdown = "\n".join(lines) + "\n"
  summary = dict(model=config.model, joint=bool(config.joint), restarts=int(config.restarts),
                 tasks=tasks, mean_test_error=mean, failed_tasks=failed,
                 paper_mean_test_error=paper_means, paper_failed_tasks=paper_failed,
                 train_seconds=seconds, rows=rows, config=_config_key(config))
  if ens:
    summary.update(ensemble_size=rows[0]["ensemble_size"], ensemble_mean_test_error=ens_mean,
                   ensemble_failed_tasks=ens_failed)
  with open(os.path.join(workdir, "babi_table.md"), "w") as f:
    f.write(markdown)
  with open(os.path.join(workdir, "babi_table.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return markdown


def select_per_task(per_task: dict[str, Any], joint: dict[str, Any]) -> dict[str, Any]:
  """Per task, the per-task model or the joint one, whichever has the lower validation error.

  Both arguments are `babi_table.json` summaries (of a `:table` run and a
  `:joint` run). The choice looks at validation error only (of each
  system's picked restart on that task's held-out questions); on a tie the
  joint model is taken, since its validation error was not what picked it
  (the joint restart is picked on all tasks at once, a per-task restart on
  that task's own validation questions). Test errors are only reported.

  Returns:
    {"rows": [...], "mean_test_error", "failed_tasks", "joint_tasks"} with one
    row per task: both systems' validation and test errors and the choice.
  """
  joint_rows = {r["task"]: r for r in joint["rows"]}
  rows = []
  for r in sorted(per_task["rows"], key=lambda r: r["task"]):
    j = joint_rows.get(r["task"])
    if j is None:
      raise ValueError(f"task {r['task']} is in the per-task table but not in the joint one")
    use_joint = j["valid_error"] <= r["valid_error"]
    picked = j if use_joint else r
    rows.append(dict(task=r["task"], name=r["name"], per_task_valid_error=r["valid_error"],
                     per_task_test_error=r["test_error"], joint_valid_error=j["valid_error"],
                     joint_test_error=j["test_error"], picked="joint" if use_joint else "per task",
                     test_error=picked["test_error"]))
  errors = [r["test_error"] for r in rows]
  return dict(rows=rows, mean_test_error=float(np.mean(errors)),
              failed_tasks=int(sum(e > FAIL_THRESHOLD for e in errors)),
              joint_tasks=[r["task"] for r in rows if r["picked"] == "joint"])


def selection_markdown(selection: dict[str, Any]) -> str:
  """The table of `select_per_task`, with the paper's columns."""
  lines = ["| task | per task: valid / test | joint: valid / test | picked | test error | " +
           " | ".join(f"paper {k}" for k in PAPER) + " |",
           "| --- | ---: | ---: | --- | ---: | " + " | ".join("---:" for _ in PAPER) + " |"]
  tasks = [r["task"] for r in selection["rows"]]
  for r in selection["rows"]:
    lines.append(f"| {r['task']}: {r['name']} | {r['per_task_valid_error']:.1f} / "
                 f"{r['per_task_test_error']:.1f} | {r['joint_valid_error']:.1f} / "
                 f"{r['joint_test_error']:.1f} | {r['picked']} | {r['test_error']:.1f} | " +
                 " | ".join(f"{col[r['task'] - 1]:.1f}" for col in PAPER.values()) + " |")
  paper_means, paper_failed = _paper_summaries(tasks)
  lines.append(f"| **mean error** | | | | **{selection['mean_test_error']:.1f}** | " +
               " | ".join(f"{v:.1f}" for v in paper_means.values()) + " |")
  lines.append(f"| **failed (> 5 %)** | | | | **{selection['failed_tasks']}** | " +
               " | ".join(str(v) for v in paper_failed.values()) + " |")
  return "\n".join(lines) + "\n"


def plot_attention(model: nnx.Module, data: babi.BabiData, index: int, path: str) -> None:
  """Saves the attention of every hop over the story of test question `index`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ex = data.test.take(np.array([index]))
  out = model(ex.story, ex.question, ex.memory_mask)
  size = int(ex.story_size[0])
  attention = np.asarray(out.attention[0, :, :size])[:, ::-1].T  # [sentences oldest first, K]
  words = data.vocab.words
  sentences = [" ".join(data.vocab.decode(ex.story[0, s])) for s in range(size)][::-1]
  supporting = {size - 1 - s for s in ex.supporting[0] if s >= 0}
  labels = [("* " if i in supporting else "") + s for i, s in enumerate(sentences)]
  fig, ax = plt.subplots(figsize=(7.0, 1.4 + 0.32 * size))
  ax.imshow(attention, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
  for (i, k), v in np.ndenumerate(attention):
    ax.text(k, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
            color="white" if v > 0.6 else "black")
  ax.set_xticks(range(attention.shape[1]), [f"hop {k + 1}" for k in range(attention.shape[1])])
  ax.set_yticks(range(size), labels, fontsize=8)
  question = " ".join(data.vocab.decode(ex.question[0]))
  predicted = words[int(np.argmax(out.logits[0]))]
  ax.set_title(f"{question}?\nanswer: {words[int(ex.answer[0])]}, predicted: {predicted} "
               "(* marks the supporting facts)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def pick_example(data: babi.BabiData, task: int, predictions: np.ndarray) -> int:
  """A test question of `task` answered correctly: most supporting facts, then shortest story."""
  rows = np.flatnonzero((data.test.task == task) & (predictions == data.test.answer))
  if rows.size == 0:
    rows = np.flatnonzero(data.test.task == task)
  facts = (data.test.supporting[rows] >= 0).sum(axis=1)
  return int(rows[np.lexsort((data.test.story_size[rows], -facts))[0]])


# ----------------------------------------------------------------------------- entry point


def train_data(config: ml_collections.ConfigDict, tasks: tuple[int, ...], seed: int,
               writer: MetricWriter, progress: Progress, done_epochs: int,
               label: str) -> tuple[Trainer, RunResult]:
  data = babi.load(config.data_dir, tasks, memory_size=int(config.memory_size),
                   validation_fraction=float(config.validation_fraction))
  trainer = Trainer(config, data)
  logging.info("%s: %d train / %d valid / %d test questions, vocabulary %d, memory %d, "
               "sentence %d, %d distinct sentences", label, len(data.train), len(data.valid),
               len(data.test), len(data.vocab), data.memory_size, data.sentence_size,
               trainer.num_sentences)

  def on_epoch(epoch, total, metrics, best):
    row = {k: float(np.mean(v)) for k, v in metrics.items()}
    writer.write(done_epochs + epoch, run=label, epoch=epoch,
                 train_loss=row["train_loss"], train_error=1 - row["train_accuracy"],
                 valid_error=1 - row["valid_accuracy"],
                 best_valid_error=float(1 - np.max(best)))
    if epoch % 10 == 0 or epoch == total:
      progress.log(done_epochs + epoch, run=label, train_error=1 - row["train_accuracy"],
                   best_valid_error=float(1 - np.max(best)))

  return trainer, trainer.fit(seed, on_epoch=on_epoch)


def _result_rows(data: babi.BabiData, run: RunResult, ensemble: int = 1
                 ) -> list[dict[str, Any]]:
  per_restart = [task_errors(data, run.test_predictions[r]) for r in
                 range(run.test_predictions.shape[0])]
  per_restart_valid = [task_errors(data, run.valid_predictions[r], "valid") for r in
                       range(run.valid_predictions.shape[0])]
  if ensemble > 1:
    ensemble_test = task_errors(data, run.ensemble_predictions(ensemble))
    ensemble_valid = task_errors(data, run.ensemble_predictions(ensemble, "valid"), "valid")
  rows = []
  for t in data.tasks:
    # Joint training picks on the validation error over all tasks; this is per task.
    valid_error = [p[t] for p in per_restart_valid]
    rows.append(dict(
        task=t, name=data.names[t], test_error=per_restart[run.chosen][t],
        valid_error=float(valid_error[run.chosen]), chosen_restart=run.chosen,
        restart_valid_error=[float(v) for v in valid_error],
        restart_test_error=[p[t] for p in per_restart],
        train_seconds=run.seconds, epochs=run.epochs))
    if ensemble > 1:
      rows[-1].update(ensemble_size=ensemble, ensemble_test_error=ensemble_test[t],
                      ensemble_valid_error=ensemble_valid[t])
  return rows


def _run(config: ml_collections.ConfigDict, run_tasks: tuple[int, ...], workdir: str,
         index: int, total_runs: int) -> list[dict[str, Any]]:
  """Trains one run (one task, or all tasks jointly) unless its result is saved."""
  label = "joint" if config.joint else f"task_{run_tasks[0]:02d}"
  path = os.path.join(workdir, "results", f"{label}.json")
  key = _config_key(config)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get("config") == key and saved.get("tasks") == list(run_tasks):
      logging.info("%s: already done, reusing %s", label, path)
      return saved["rows"]
  epochs = int(config.linear_start_epochs) + int(config.epochs)
  writer = MetricWriter(os.path.join(workdir, "metrics.jsonl"))
  progress = Progress(epochs * total_runs, start_step=index * epochs)
  seed = int(config.seed) + (0 if config.joint else 1000 * run_tasks[0])
  trainer, run = train_data(config, run_tasks, seed, writer, progress, index * epochs, label)
  rows = _result_rows(trainer.data, run, int(config.get("ensemble", 1)))
  for r in rows:
    logging.info("task %d (%s): test error %.1f %% (restart %d of %d, valid error %.1f %%), "
                 "%.0f s", r["task"], r["name"], r["test_error"], run.chosen + 1,
                 len(run.valid_accuracy), r["valid_error"], run.seconds)
    if "ensemble_test_error" in r:
      logging.info("task %d: test error %.1f %% for the %d restarts best on validation, "
                   "probabilities averaged", r["task"], r["ensemble_test_error"],
                   r["ensemble_size"])
  if config.plot:
    for t in run_tasks[:1] if config.joint else run_tasks:
      model = trainer.model(run.best_params, run.chosen)
      example = pick_example(trainer.data, t, run.test_predictions[run.chosen])
      plot_attention(model, trainer.data, example,
                     os.path.join(workdir, f"attention_task{t}.png"))
  with open(path + ".tmp", "w") as f:
    json.dump(dict(config=key, tasks=list(run_tasks), rows=rows), f, indent=1)
  os.replace(path + ".tmp", path)
  return rows


def _worker_run(config_dict: dict[str, Any], run_tasks: tuple[int, ...], workdir: str,
                index: int, total_runs: int) -> list[dict[str, Any]]:
  """`_run` in a worker process (absl logging set up as in the launcher)."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  return _run(ml_collections.ConfigDict(config_dict), run_tasks, workdir, index, total_runs)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the configured tasks, writes results, the table and attention plots.

  With `config.workers` > 1, tasks train in that many processes at once (one
  task per process at a time), which keeps both cores of a small machine
  busy; a run is the same either way.

  Returns:
    The table summary (what babi_table.json holds).
  """
  validate_config(config)
  tasks = parse_tasks(config.tasks)
  os.makedirs(os.path.join(workdir, "results"), exist_ok=True)
  runs = [tasks] if config.joint else [(t,) for t in tasks]
  start = time.perf_counter()
  workers = min(int(config.get("workers", 1)), len(runs))
  if workers <= 1:
    results = [r for i, t in enumerate(runs) for r in _run(config, t, workdir, i, len(runs))]
  else:
    # Longest tasks first, so that no worker is left with a long one at the end.
    order = sorted(range(len(runs)), key=lambda i: -_run_cost(config, runs[i]))
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      jobs = [pool.submit(_worker_run, config.to_dict(), runs[i], workdir, n, len(runs))
              for n, i in enumerate(order)]
      results = [r for job in jobs for r in job.result()]
  markdown = write_table(results, workdir, config, time.perf_counter() - start)
  logging.info("results table (%s):\n%s", os.path.join(workdir, "babi_table.md"), markdown)
  with open(os.path.join(workdir, "babi_table.json")) as f:
    return json.load(f)


def _run_cost(config: ml_collections.ConfigDict, run_tasks: tuple[int, ...]) -> int:
  """A rough training cost: the memory slots the run's stories fill."""
  cost = 0
  for t in run_tasks:
    train, _ = babi.find_task_files(config.data_dir, t)
    cost += sum(min(len(ex.story), int(config.memory_size)) + 5 for ex in babi.parse(train, t))
  return cost
