"""Trains a `MemoryTransformer` on long-range retrieval and measures accuracy against distance.

Training uses short sequences (a few segments) with pairs and queries at
random places, in phases of growing length: the first, shorter than the
local window, lets attention learn the induction-style lookup; the later ones
put many answers beyond the window, so the memory path and its gate learn to
take over. Evaluation then runs much longer sequences, with an external
memory of any size (16k, 64k tokens), at distances chosen independently of
the training length, with and without the external memory (same weights).

Outputs in the workdir: `metrics.jsonl` (training rows, then one row per
evaluation suite and distance), `accuracy_vs_distance.png`, `params.npz`
(the trained weights, reloaded by `load_params`).

The batch is split over a one-axis device mesh ('data'); the parameters are
replicated, so the same code runs on one CPU or on many accelerators.
"""

from __future__ import annotations

import functools
import os
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from memjax import _checks
from memjax import ivf
from memjax import xla
from memjax.nn import transformer
from memjax.tasks import retrieval
from memjax.training import metrics

PLOT_FILE = "accuracy_vs_distance.png"
PARAMS_FILE = "params.npz"


def vocab_from_config(config: ml_collections.ConfigDict) -> retrieval.RetrievalVocab:
  v = config.vocab
  return retrieval.RetrievalVocab(num_keys=v.num_keys, num_values=v.num_values,
                                  num_filler=v.num_filler)


def create_model(config: ml_collections.ConfigDict,
                 segment_length: int | None = None) -> transformer.MemoryTransformer:
  """The model a config describes, initialised from `config.seed`."""
  m = config.model
  return transformer.MemoryTransformer(
      vocab_from_config(config).size, m.features, m.num_layers, m.num_heads,
      window=m.window, memory_layers=tuple(m.memory_layers),
      segment_length=segment_length or config.train.segment_length, top_k=m.top_k,
      num_memory_slots=m.num_memory_slots, key_conv=m.key_conv,
      mlp_features=m.mlp_features or None, qk_scale_init=m.qk_scale_init or None,
      rngs=nnx.Rngs(config.seed))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError on a config that cannot run, before anything compiles."""
  m, t, e = config.model, config.train, config.eval
  for name in ("num_keys", "num_values", "num_filler"):
    _checks.integer(config.vocab[name], f"vocab.{name}")
  for name in ("features", "num_layers", "num_heads", "window", "top_k", "key_conv"):
    _checks.integer(m[name], f"model.{name}")
  _checks.integer(m.num_memory_slots, "model.num_memory_slots", 0)
  if m.mlp_features:  # 0 or None: the block's default width
    _checks.integer(m.mlp_features, "model.mlp_features", what="or 0/None for the default")
  if m.qk_scale_init:
    _checks.number(m.qk_scale_init, "model.qk_scale_init", 0, open_low=True)
  if m.features % m.num_heads:
    raise ValueError(f"model.features={m.features} must be divisible by "
                     f"model.num_heads={m.num_heads}")
  for i in m.memory_layers:
    _checks.integer(i, "each of model.memory_layers", 0, m.num_layers - 1,
                    what=f"a layer of the {m.num_layers}")
  segment_length = _checks.integer(t.segment_length, "train.segment_length")
  _checks.integer(t.memory_size, "train.memory_size", m.top_k, what="at least model.top_k")
  min_pairs = _checks.integer(t.min_pairs, "train.min_pairs")
  max_pairs = _checks.integer(t.max_pairs, "train.max_pairs", min_pairs,
                              what="at least train.min_pairs")
  vocab = vocab_from_config(config)
  if max_pairs > vocab.num_keys:
    raise ValueError(f"train.max_pairs={max_pairs} exceeds vocab.num_keys={vocab.num_keys}")
  _checks.integer(t.warmup_steps, "train.warmup_steps", 0)
  _checks.integer(t.log_every, "train.log_every")
  _checks.number(t.learning_rate, "train.learning_rate", 0, open_low=True)
  _checks.number(t.scalar_lr_multiplier, "train.scalar_lr_multiplier", 0, open_low=True)
  _checks.number(t.final_lr_fraction, "train.final_lr_fraction", 0, 1)
  _checks.number(t.grad_clip, "train.grad_clip", 0, open_low=True)
  _checks.number(t.weight_decay, "train.weight_decay", 0)
  if not t.phases:
    raise ValueError("train.phases must list at least one (steps, length, batch)")
  for phase in t.phases:
    if len(phase) != 3:
      raise ValueError(f"each train phase must be (steps, length, batch); got {phase!r}")
    for what, value in zip(("steps", "length", "batch"), phase):
      _checks.integer(value, f"train phase {tuple(phase)!r}: {what}")
    _, length, _ = phase
    if length % segment_length:
      raise ValueError(f"train phase {phase!r}: length must be a multiple of "
                       f"train.segment_length={segment_length}")
    if length < 4 * max_pairs:
      raise ValueError(f"train phase {phase!r}: length must be at least 4 * train.max_pairs="
                       f"{4 * max_pairs}")
  _checks.integer(e.segment_length, "eval.segment_length")
  for name, suite in e.suites.items():
    where = f"eval suite {name!r}:"
    for field in ("batch", "pairs_per_distance"):
      _checks.integer(suite[field], f"{where} {field}")
    if not suite.distances:
      raise ValueError(f"{where} distances must name at least one distance")
    for d in suite.distances:
      _checks.integer(d, f"{where} each distance")
    total = len(suite.distances) * suite.pairs_per_distance
    if total > vocab.num_keys:
      raise ValueError(f"{where} {len(suite.distances)} distances x "
                       f"{suite.pairs_per_distance} pairs exceed vocab.num_keys="
                       f"{vocab.num_keys}")
    if suite.use_memory:
      _checks.integer(suite.memory_size, f"{where} memory_size", m.top_k,
                      what="at least model.top_k")
    search = suite.get("search", "exact")
    if search not in ("exact", "ivf"):
      raise ValueError(f"{where} search must be 'exact' or 'ivf'; got {search!r}")
    if search == "ivf":
      if not suite.use_memory:
        raise ValueError(f"{where} search='ivf' needs use_memory=True")
      for field in ("calibration_batch", "calibration_length", "num_lists", "list_size",
                    "probes"):
        _checks.integer(suite[field], f"{where} {field}")
      if suite.probes > suite.num_lists:
        raise ValueError(f"{where} probes={suite.probes} exceeds num_lists={suite.num_lists}")
      if suite.probes * suite.list_size < m.top_k:
        raise ValueError(f"{where} probes x list_size must be at least model.top_k={m.top_k}")
  _suites_to_run(config)


def masked_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean cross-entropy over the scored (query) positions."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1)


# Per-head scalars whose useful values are far from their initial ones (a gate
# near 0 or 1, a sharp query-key scale): Adam moves a parameter by about one
# learning rate per step, so they get a larger one.
SCALAR_PARAMS = ("gate", "log_scale")


def _labels(params):
  def label(path, _):
    names = {getattr(k, "key", getattr(k, "name", None)) for k in path}
    return "scalar" if names & set(SCALAR_PARAMS) else "default"
  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clipping, then AdamW with warmup and cosine decay; `SCALAR_PARAMS` at a higher rate."""
  t = config.train
  total = sum(phase[0] for phase in t.phases)

  def adamw(peak):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, peak, min(t.warmup_steps, max(total - 1, 1)), max(total, 2),
        end_value=peak * t.final_lr_fraction)
    return optax.adamw(schedule, weight_decay=t.weight_decay)

  return optax.chain(
      optax.clip_by_global_norm(t.grad_clip),
      optax.multi_transform({"default": adamw(t.learning_rate),
                             "scalar": adamw(t.learning_rate * t.scalar_lr_multiplier)},
                            _labels))


def phase_memory_size(config: ml_collections.ConfigDict, length: int) -> int:
  """Memory slots for training sequences of `length` tokens.

  A training sequence is one document, so its memory never holds more than
  `length - segment_length` items; a larger table would only cost lookups.
  """
  t = config.train
  return max(min(t.memory_size, length - t.segment_length), config.model.top_k)


def make_train_step(graphdef, tx: optax.GradientTransformation, window: int):
  """A jitted step: (params, opt_state, batch arrays, memory size) -> (params, opt_state, stats)."""

  def loss_fn(params, tokens, targets, mask, distances, memory_size):
    model = nnx.merge(graphdef, params)
    state = model.init_state(tokens.shape[0], memory_size)
    logits, _ = model(tokens, state)
    loss = masked_loss(logits, targets, mask)
    correct = (jnp.argmax(logits, -1) == targets) & mask
    near = mask & (distances < window)
    far = mask & (distances >= window)
    stats = {"correct_near": jnp.sum(correct & near), "count_near": jnp.sum(near),
             "correct_far": jnp.sum(correct & far), "count_far": jnp.sum(far)}
    return loss, stats

  @functools.partial(jax.jit, static_argnames="memory_size",
                     compiler_options=xla.cpu_options(xla.IN_PLACE_MEMORY))
  def step(params, opt_state, tokens, targets, mask, distances, memory_size):
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, tokens, targets, mask, distances, memory_size)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, **stats}

  return step


@functools.lru_cache(maxsize=8)
def _eval_segment_fn(graphdef, use_memory: bool):
  @functools.partial(jax.jit, donate_argnums=(1,),
                     compiler_options=xla.cpu_options(xla.IN_PLACE_MEMORY))
  def run(params, state, tokens):
    model = nnx.merge(graphdef, params)
    logits, state = model.segment(tokens, state, use_memory=use_memory)
    return jnp.argmax(logits, -1).astype(jnp.int32), state
  return run


def _recall_fn(graphdef):
  """Per query and head of layer 0: the fraction of the exact top-k that the index returns."""
  @jax.jit
  def recall(params, state, tokens):
    model = nnx.merge(graphdef, params)
    block, block_state = model.blocks[0], state[0]
    q, _, _, _ = block.queries_and_keys(model.embed(tokens), block_state)
    k = block.top_k
    exact = block.retrieve(model.embed(tokens), block_state).ids  # [B, H, S, k]
    approx = ivf.search(block_state.index, q, k).ids
    hits = (exact[..., :, None] == approx[..., None, :]) & (exact[..., :, None] >= 0)
    return jnp.sum(hits, axis=(-1, -2)) / jnp.maximum(jnp.sum(exact >= 0, axis=-1), 1)
  return recall


def evaluate(model: transformer.MemoryTransformer, batch: retrieval.RetrievalBatch, *,
             memory_size: int, use_memory: bool = True, segment_length: int | None = None,
             mesh: jax.sharding.Mesh | None = None,
             centroids: dict[int, jax.Array] | None = None, list_size: int | None = None,
             probes: int = 1, measure_recall: bool = False) -> dict[int, tuple[int, int]]:
  """Runs the model over long sequences segment by segment; scores the queries.

  Args:
    model: a trained model.
    batch: an `evaluation_batch` (its length a multiple of `segment_length`).
    memory_size: N, memory slots per sequence and head.
    use_memory: False evaluates the same weights without external memory.
    segment_length: tokens per step (default: the model's segment length).
    mesh: optional 'data' mesh to split the batch over.
    centroids: optional {layer: [H, C, E]}: those layers search an
      approximate `ivf.IVFMemory` (`fit_index_centroids`) instead of the
      exact store.
    list_size: L of the approximate memory's lists.
    probes: lists its search visits per query.
    measure_recall: with `centroids` for layer 0, also keep the exact memory
      and measure, at every query of the batch, the fraction of the exact
      top-k that the approximate search returns (mean over heads).

  Returns:
    {distance: (correct, count)}; with `measure_recall`, also the key
    "recall": (summed recall, count) over the queries.
  """
  s = model.segment_length if segment_length is None else segment_length
  graphdef, params = nnx.split(model)
  run = _eval_segment_fn(graphdef, use_memory)
  tokens = np.asarray(batch.tokens)
  b, length = tokens.shape
  if length % s:
    raise ValueError(f"batch length {length} must be a multiple of segment_length={s}")
  if measure_recall and (not centroids or 0 not in centroids):
    raise ValueError("measure_recall needs centroids for layer 0")
  state = model.init_state(b, memory_size if use_memory else None, centroids=centroids,
                           list_size=list_size, probes=probes, exact_too=measure_recall)
  if mesh is not None:
    params = transformer.replicate(params, mesh)
    state = transformer.shard_batch(state, mesh)
  recall_fn = _recall_fn(graphdef) if measure_recall else None
  recall_sum = recall_count = 0.0
  predictions = []
  for start in range(0, length, s):
    seg = tokens[:, start:start + s]
    asked = batch.mask[:, start:start + s]
    if mesh is not None:
      seg = transformer.shard_batch(seg, mesh)
    if recall_fn is not None and asked.any():
      per_query = np.asarray(recall_fn(params, state, seg)).mean(axis=1)  # [B, S]
      recall_sum += float(per_query[asked].sum())
      recall_count += float(asked.sum())
    pred, state = run(params, state, seg)
    predictions.append(np.asarray(pred))
  pred = np.concatenate(predictions, axis=1)
  correct = (pred == batch.targets) & batch.mask
  result = {}
  for d in np.unique(batch.distances[batch.mask]):
    at = batch.mask & (batch.distances == d)
    result[int(d)] = (int(correct[at].sum()), int(at.sum()))
  if measure_recall:
    result["recall"] = (recall_sum, recall_count)
  return result


def save_params(params, path: str) -> None:
  """Writes a parameter pytree to an .npz file (keys are the tree paths)."""
  flat = {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(params)}
  with open(path, "wb") as f:
    np.savez(f, **flat)


def load_params(model: transformer.MemoryTransformer, path: str) -> None:
  """Loads weights written by `save_params` into `model` (shapes must match)."""
  _, params = nnx.split(model)
  with np.load(path) as data:
    def take(p, x):
      value = data[jax.tree_util.keystr(p)]
      if value.shape != x.shape:
        raise ValueError(f"{path}: {jax.tree_util.keystr(p)} has shape {value.shape}, "
                         f"the model expects {x.shape}")
      return jnp.asarray(value)
    params = jax.tree_util.tree_map_with_path(take, params)
  nnx.update(model, params)


def plot_accuracy(rows: list[dict[str, Any]], path: str, *, window: int, chance: float) -> str:
  """Accuracy against distance, one line per evaluation suite; returns `path`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for suite in sorted({r["suite"] for r in rows}):
    pts = sorted((r["distance"], r["accuracy"]) for r in rows if r["suite"] == suite)
    xs, ys = zip(*pts)
    ax.plot(xs, ys, marker="o", label=suite)
  ax.axhline(chance, color="gray", ls=":", label=f"chance ({chance:.3f})")
  ax.axvline(window, color="gray", ls="--", label=f"local window ({window})")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("distance from pair to query (tokens)")
  ax.set_ylabel("retrieval accuracy")
  ax.set_ylim(-0.02, 1.02)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def train(config: ml_collections.ConfigDict, workdir: str, *,
          writer: metrics.MetricWriter | None = None,
          mesh: jax.sharding.Mesh | None = None) -> tuple[transformer.MemoryTransformer, float]:
  """Trains per `config.train`; returns (model, training seconds)."""
  t = config.train
  vocab = vocab_from_config(config)
  mesh = transformer.data_parallel_mesh() if mesh is None else mesh
  model = create_model(config)
  graphdef, params = nnx.split(model)
  tx = make_optimizer(config)
  params = transformer.replicate(params, mesh)
  opt_state = tx.init(params)
  step_fn = make_train_step(graphdef, tx, config.model.window)
  rng = np.random.default_rng(config.seed)
  total = sum(phase[0] for phase in t.phases)
  progress = metrics.Progress(total)
  step = 0
  sums, logged_steps = None, 0
  start = time.perf_counter()
  for steps, length, batch_size in t.phases:
    for _ in range(steps):
      data = retrieval.training_batch(rng, batch_size, length, t.max_pairs,
                                      min_pairs=t.min_pairs, vocab=vocab)
      arrays = transformer.shard_batch(
          (data.tokens, data.targets, data.mask, data.distances), mesh)
      params, opt_state, stats = step_fn(params, opt_state, *arrays,
                                         memory_size=phase_memory_size(config, length))
      step += 1
      stats = jax.device_get(stats)
      sums = stats if sums is None else {k: sums[k] + stats[k] for k in stats}
      logged_steps += 1
      if step % t.log_every == 0 or step == total:
        row = {
            "split": "train", "length": length,
            "loss": float(sums["loss"]) / logged_steps,
            "accuracy_near": float(sums["correct_near"]) / max(int(sums["count_near"]), 1),
            "accuracy_far": float(sums["correct_far"]) / max(int(sums["count_far"]), 1),
            "elapsed_s": time.perf_counter() - start,
        }
        progress.log(step, **{k: v for k, v in row.items() if k != "split"})
        if writer is not None:
          writer.write(step, **row)
        sums, logged_steps = None, 0
  train_seconds = time.perf_counter() - start
  nnx.update(model, jax.device_get(params))
  save_params(jax.device_get(params), os.path.join(workdir, PARAMS_FILE))
  return model, train_seconds


def run_evaluation(model: transformer.MemoryTransformer, config: ml_collections.ConfigDict, *,
                   writer: metrics.MetricWriter | None = None, step: int = 0,
                   mesh: jax.sharding.Mesh | None = None) -> list[dict[str, Any]]:
  """Every suite of `config.eval.suites`: one row per (suite, distance)."""
  vocab = vocab_from_config(config)
  e = config.eval
  mesh = transformer.data_parallel_mesh() if mesh is None else mesh
  rows = []
  for name, suite in config.eval.suites.items():
    t0 = time.perf_counter()
    # The same data in any run; `data_from` names another suite to share its data.
    seed = config.seed + zlib.crc32(str(suite.get("data_from", name)).encode()) % 100_000
    batch = retrieval.evaluation_batch(
        seed, suite.batch, tuple(suite.distances), suite.pairs_per_distance,
        vocab=vocab, segment_length=e.segment_length)
    search = suite.get("search", "exact")
    extra, index_args = {}, {}
    if search == "ivf":
      # The index is trained on the keys of other sequences of the task
      # (faiss-style), never on the evaluation's.
      calibration = retrieval.training_batch(
          seed + 1, suite.calibration_batch, suite.calibration_length, config.train.max_pairs,
          vocab=vocab)
      fit_model = _with_segment_length(model, e.segment_length)
      t_fit = time.perf_counter()
      centroids = transformer.fit_index_centroids(fit_model, calibration.tokens,
                                                  suite.num_lists, seed=seed)
      extra["fit_seconds"] = time.perf_counter() - t_fit
      index_args = dict(centroids=centroids, list_size=suite.list_size, probes=suite.probes,
                        measure_recall=bool(suite.get("measure_recall", False)))
      extra.update(search="ivf", num_lists=int(suite.num_lists), list_size=int(suite.list_size),
                   probes=int(suite.probes))
    elif search != "exact":
      raise ValueError(f"eval suite {name!r}: search must be 'exact' or 'ivf'; got {search!r}")
    result = evaluate(model, batch, memory_size=suite.memory_size, use_memory=suite.use_memory,
                      segment_length=e.segment_length, mesh=mesh, **index_args)
    seconds = time.perf_counter() - t0
    if "recall" in result:
      total, count = result.pop("recall")
      extra["recall"] = total / max(count, 1)
      logging.info("eval %s: recall@%d of the approximate search %.4f over %d queries", name,
                   config.model.top_k, extra["recall"], count)
    for distance, (correct, count) in sorted(result.items()):
      row = {"split": "eval", "suite": name, "use_memory": bool(suite.use_memory),
             "memory_size": int(suite.memory_size) if suite.use_memory else 0,
             "distance": distance, "accuracy": correct / count, "correct": correct,
             "count": count, "chance": vocab.chance, "eval_seconds": seconds, **extra}
      rows.append(row)
      logging.info("eval %s distance %d: accuracy %.4f (%d/%d)", name, distance,
                   correct / count, correct, count)
      if writer is not None:
        writer.write(step, **row)
  return rows


def _with_segment_length(model: transformer.MemoryTransformer,
                         segment_length: int) -> transformer.MemoryTransformer:
  """The same weights, run in segments of `segment_length` tokens."""
  graphdef, params = nnx.split(model)
  other = nnx.merge(graphdef, params)
  other.segment_length = segment_length
  return other


def _suites_to_run(config: ml_collections.ConfigDict) -> list[str]:
  """The names in `config.eval.run_suites` ("all", "none" or comma-separated names)."""
  names = list(config.eval.suites.keys())
  wanted = str(config.eval.get("run_suites", "all")).strip()
  if wanted == "all":
    return names
  if wanted in ("none", ""):
    return []
  chosen = [n.strip() for n in wanted.split(",") if n.strip()]
  for n in chosen:
    if n not in names:
      raise ValueError(f"eval.run_suites names unknown suite {n!r}; known: {names}")
  return chosen


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates the suites, writes metrics.jsonl and the plot.

  Running again on the same workdir resumes: a finished training (its
  `params.npz` and summary row) is loaded instead of repeated, and suites
  already in metrics.jsonl are not evaluated again. `config.eval.run_suites`
  ("all", "none" or comma-separated suite names) picks the suites of this
  run, so a long evaluation can be split over several runs.

  Returns:
    {"train_seconds": ..., "eval": [rows of every suite so far], "plot": path or None}.
  """
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  params_path = os.path.join(workdir, PARAMS_FILE)
  total = sum(phase[0] for phase in config.train.phases)
  previous = metrics.read_metrics(metrics_path) if os.path.exists(metrics_path) else []
  summary = [r for r in previous if r.get("split") == "train_summary"]
  mesh = transformer.data_parallel_mesh()
  logging.info("data-parallel over %d device(s)", mesh.size)
  if summary and os.path.exists(params_path):
    writer = metrics.MetricWriter(metrics_path)
    model = create_model(config)
    load_params(model, params_path)
    train_seconds = float(summary[-1]["train_seconds"])
    logging.info("resuming: loaded %s (trained in %.1f s)", params_path, train_seconds)
  else:
    writer = metrics.MetricWriter(metrics_path, resume_step=-1)
    previous = []
    model, train_seconds = train(config, workdir, writer=writer, mesh=mesh)
    writer.write(total, split="train_summary", train_seconds=train_seconds)
    logging.info("training took %.1f s", train_seconds)
  done = {r["suite"] for r in previous if r.get("split") == "eval"}
  todo = [n for n in _suites_to_run(config) if n not in done]
  if todo:
    run_config = config.copy_and_resolve_references()
    with run_config.unlocked():
      run_config.eval.suites = ml_collections.ConfigDict(
          {n: config.eval.suites[n] for n in todo})
    run_evaluation(model, run_config, writer=writer, step=total, mesh=mesh)
  rows = [r for r in metrics.read_metrics(metrics_path) if r.get("split") == "eval"]
  plot = None
  if rows:
    plot = plot_accuracy(rows, os.path.join(workdir, PLOT_FILE), window=config.model.window,
                         chance=vocab_from_config(config).chance)
  return {"train_seconds": train_seconds, "eval": rows, "plot": plot}
