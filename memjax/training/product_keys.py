"""Trainer: a product-key memory layer memorising random associations.

The model is `x -> ProductKeyMemory -> linear -> class logits`, trained with
Adam on `memjax.tasks.associations` (random inputs, random labels). The
baseline (`config.model = "mlp"`) swaps the memory for a two-layer MLP of
about the same number of parameters outside the memory, to show what the
memory adds. Metrics: training loss, and accuracy over all items (the items
are the test: this is a capacity task).

With `config.mesh_devices > 1` the value table is split over that many
devices (`memjax.nn.product_keys` reads it with a shard_map).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from memjax import _checks
from memjax.nn import product_keys
from memjax.tasks import associations
from memjax.training import metrics

MODELS = ("pkm", "mlp")


def validate_config(config: ml_collections.ConfigDict) -> None:
  if config.model not in MODELS:
    raise ValueError(f"model must be one of {MODELS}; got {config.model!r}")
  names = ("num_items", "in_features", "num_classes", "num_sub_keys", "query_size",
           "num_heads", "k", "value_size", "batch_size", "steps", "eval_every")
  if config.model == "mlp":
    names += ("mlp_hidden",)
  for name in names:
    _checks.integer(config[name], name)
  _checks.integer(config.mesh_devices, "mesh_devices", 0, what="0 or 1: unsharded")
  _checks.number(config.learning_rate, "learning_rate", 0, open_low=True)
  if config.query_size % 2:
    raise ValueError(f"query_size must be even; got {config.query_size}")
  if config.k > config.num_sub_keys:
    raise ValueError(f"k must be at most num_sub_keys={config.num_sub_keys}; got {config.k}")
  if config.mesh_devices > jax.device_count():
    raise ValueError(f"mesh_devices={config.mesh_devices} but only {jax.device_count()} "
                     "devices exist")


class Classifier(nnx.Module):
  """x [B, I] -> logits [B, C] through a product-key memory or an MLP."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh | None, rngs: nnx.Rngs):
    self.model = config.model
    if config.model == "pkm":
      self.body = product_keys.ProductKeyMemory(
          config.in_features, config.value_size, num_sub_keys=config.num_sub_keys,
          query_size=config.query_size, num_heads=config.num_heads, k=config.k, mesh=mesh,
          rngs=rngs)
    else:
      self.hidden = nnx.Linear(config.in_features, config.mlp_hidden, rngs=rngs)
      self.body = nnx.Linear(config.mlp_hidden, config.value_size, rngs=rngs)
    self.head = nnx.Linear(config.value_size, config.num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.body(x) if self.model == "pkm" else self.body(jax.nn.relu(self.hidden(x)))
    return self.head(h)


def _count(model) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains for `config.steps` steps; returns the last metrics row."""
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  mesh = None
  if config.mesh_devices > 1:
    mesh = Mesh(np.array(jax.devices()[:config.mesh_devices]), ("memory",))
  data = associations.random_associations(config.num_items, config.in_features,
                                          config.num_classes, config.seed)
  model = Classifier(config, mesh, nnx.Rngs(config.seed))
  optimizer = nnx.Optimizer(model, optax.adam(config.learning_rate), wrt=nnx.Param)
  logging.info("model %s: %d parameters", config.model, _count(model))

  @nnx.jit
  def train_step(model, optimizer, x, y):
    def loss_fn(model):
      logits = model(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  @nnx.jit
  def predict(model, x):
    model.eval()  # BatchNorm uses its running statistics
    out = jnp.argmax(model(x), axis=-1)
    model.train()
    return out

  def accuracy():
    correct = 0
    for start in range(0, config.num_items, 4096):
      x = data.inputs[start:start + 4096]
      correct += int(jnp.sum(predict(model, x) == data.labels[start:start + 4096]))
    return correct / config.num_items

  writer = metrics.MetricWriter(os.path.join(workdir, "metrics.jsonl"))
  progress = metrics.Progress(config.steps)
  stream = associations.batches(data, config.batch_size, config.seed)
  row = {}
  start = time.perf_counter()
  for step in range(1, config.steps + 1):
    x, y = next(stream)
    loss = train_step(model, optimizer, x, y)
    if step % config.eval_every == 0 or step == config.steps:
      loss = float(loss)
      seconds = time.perf_counter() - start
      row = writer.write(step, loss=loss, accuracy=accuracy(), seconds=seconds,
                         parameters=_count(model))
      progress.log(step, loss=loss, accuracy=row["accuracy"])
  return row
