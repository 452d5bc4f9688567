"""memjax.nn.product_keys: exact product-key search, the layer against NumPy, learning."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from experiments.configs import product_keys as product_keys_config
from memjax.nn import product_keys
from memjax.training import product_keys as product_keys_trainer


def _full_keys(sub_keys):
  """[n^2, Dq]: slot i n + j holds [sub_keys[0, i]; sub_keys[1, j]]."""
  n = sub_keys.shape[1]
  return np.concatenate([np.repeat(sub_keys[0], n, axis=0), np.tile(sub_keys[1], (n, 1))], 1)


@pytest.mark.parametrize("n, half, k, seed", [(7, 2, 1, 0), (12, 3, 5, 1), (20, 4, 20, 2)])
def test_top_k_equals_brute_force_over_all_n_squared_keys(n, half, k, seed):
  rng = np.random.default_rng(seed)
  sub_keys = rng.normal(size=(2, n, half)).astype(np.float32)
  queries = rng.normal(size=(6, 2 * half)).astype(np.float32)
  found = product_keys.product_key_top_k(queries, sub_keys, k)
  scores = queries.astype(np.float64) @ _full_keys(sub_keys).T.astype(np.float64)
  want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  np.testing.assert_array_equal(found.indices, want)
  np.testing.assert_allclose(found.scores, np.take_along_axis(scores, want, 1), rtol=1e-5,
                             atol=1e-5)


def test_top_k_scores_are_exact_with_ties():
  rng = np.random.default_rng(3)
  sub_keys = rng.integers(-1, 2, (2, 9, 2)).astype(np.float32)
  queries = rng.integers(-1, 2, (5, 4)).astype(np.float32)
  found = product_keys.product_key_top_k(queries, sub_keys, 6)
  scores = queries @ _full_keys(sub_keys).T
  np.testing.assert_array_equal(found.scores, -np.sort(-scores, axis=1)[:, :6])
  # Whatever slots were chosen among equal scores, each has the score reported.
  np.testing.assert_array_equal(np.take_along_axis(scores, np.asarray(found.indices), 1),
                                found.scores)


def test_top_k_gradients():
  rng = np.random.default_rng(4)
  sub_keys = jnp.asarray(rng.normal(size=(2, 10, 3)), jnp.float32)
  query = jnp.asarray(rng.normal(size=(6,)), jnp.float32)
  check_grads(lambda q, s: product_keys.product_key_top_k(q, s, 4).scores, (query, sub_keys),
              order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_layer_against_numpy():
  layer = product_keys.ProductKeyMemory(5, 3, num_sub_keys=8, query_size=6, num_heads=2, k=3,
                                        rngs=nnx.Rngs(0))
  x = np.random.default_rng(5).normal(size=(4, 5)).astype(np.float32)
  out = np.asarray(layer(jnp.asarray(x)), np.float64)
  # Reference: linear, batch-norm with the batch's statistics, per head the
  # brute-force top-3 over all 64 product keys, softmax, sum over heads.
  kernel = np.asarray(layer.query.kernel[...], np.float64)
  q = x @ kernel + np.asarray(layer.query.bias[...], np.float64)
  q = (q - q.mean(0)) / np.sqrt(q.var(0) + layer.query_norm.epsilon)
  q = q * np.asarray(layer.query_norm.scale[...]) + np.asarray(layer.query_norm.bias[...])
  q = q.reshape(4, 2, 6)
  values = np.asarray(layer.values[...], np.float64)
  want = np.zeros((4, 3))
  for head in range(2):
    keys = _full_keys(np.asarray(layer.sub_keys[...][head], np.float64))
    for b in range(4):
      scores = keys @ q[b, head]
      best = np.argsort(-scores)[:3]
      w = np.exp(scores[best] - scores[best].max())
      want[b] += (w / w.sum()) @ values[best]
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_bad_arguments():
  with pytest.raises(ValueError, match="query_size must be even"):
    product_keys.ProductKeyMemory(4, 4, query_size=5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"k must be at most num_sub_keys=8"):
    product_keys.ProductKeyMemory(4, 4, num_sub_keys=8, k=9, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="twice the sub-key size"):
    product_keys.product_key_top_k(jnp.ones(5), jnp.ones((2, 4, 3)), 2)
  with pytest.raises(ValueError, match=r"k must be an integer in \[1, 4\] \(n, the sub-keys"):
    product_keys.product_key_top_k(jnp.ones(6), jnp.ones((2, 4, 3)), 5)


def test_smoke_run_learns(tmp_path):
  """The demo's small setting: accuracy on 512 random associations far above chance."""
  config = product_keys_config.get_config("smoke")
  config.steps = 200
  row = product_keys_trainer.train_and_evaluate(config, str(tmp_path))
  assert row["accuracy"] > 10 / config.num_classes, row  # chance is 1 / 32
  rows = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line]
  assert len(rows) == config.steps // config.eval_every


def test_value_table_is_sharded_when_a_mesh_is_given():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("memory",))
  layer = product_keys.ProductKeyMemory(4, 2, num_sub_keys=4, query_size=4, num_heads=1, k=2,
                                        mesh=mesh, rngs=nnx.Rngs(0))
  assert layer.values[...].sharding.spec == jax.sharding.PartitionSpec("memory", None)
  assert layer(jnp.ones((3, 4))).shape == (3, 2)
