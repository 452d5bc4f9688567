"""The algorithmic trainer split over two CPU devices equals it on one.

`config.cpu_devices = 2` runs each training step under `jax.shard_map`: each
device takes half the batch, stops its time loop after its own half's last
scored step, and one all-reduce sums the gradients, the loss and the count
of scored bits. The test runs this file as a child process with two CPU
devices (`JAX_NUM_CPU_DEVICES=2`, so the rest of the suite keeps one); the
child trains the NTM and the DNC smoke configs for three chunks from the
same start on the same batches (the two-device run's: `ntm_copy` orders
each batch by length for its devices and scan groups), once on one device
and once on two, and writes the losses, bit errors and parameters, which the
test compares.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHUNKS = 3
# "ntm_random": the NTM with memory_init='random', whose memory is drawn per sequence
# from a key of its own, so the split must not change it.
_MODELS = ("ntm", "dnc", "ntm_random")


def _child(out: str) -> None:
  import jax

  from experiments.configs import dnc_copy
  from experiments.configs import ntm_copy
  from memjax.training import algorithmic

  assert jax.device_count() == 2, jax.devices()
  arrays = {}
  for name, module in zip(_MODELS, (ntm_copy, dnc_copy, ntm_copy)):
    feed = None  # the two-device run's batches, which both runs train on
    for devices in (2, 1):
      config = module.get_config("smoke")
      config.cpu_devices = devices
      if name == "ntm_random":
        config.model.memory_init = "random"
      exp = algorithmic.build(config)
      # ntm_copy sorts each batch by length for its devices and scan groups, so the
      # one-device config orders it differently: feed it the two-device batches.
      feed = feed or exp
      params, opt_state = exp.place((exp.params, exp.optimizer.init(exp.params)))
      k = config.steps_per_call
      losses, errors, halves_differ = [], [], False
      for c in range(_CHUNKS):
        batches = feed.batches(c * k, k)
        # Last scored time step of each half of each step's batch: [k, 2].
        half = config.batch_size // 2
        assert (batches.memory_keys is None) == (name != "ntm_random")
        scored = (batches.data.mask > 0).reshape(k, 2, half, -1).any(axis=2)
        last = scored.shape[-1] - 1 - np.argmax(scored[..., ::-1], axis=-1)
        halves_differ |= bool(np.any(last[:, 0] != last[:, 1]))
        params, opt_state, loss, error = exp.train_chunk(params, opt_state, batches)
        losses.append(np.asarray(loss))
        errors.append(np.asarray(error))
      arrays[f"{name}_{devices}_loss"] = np.concatenate(losses)
      arrays[f"{name}_{devices}_errors"] = np.concatenate(errors)
      for i, leaf in enumerate(jax.tree.leaves(params)):
        arrays[f"{name}_{devices}_param{i}"] = np.asarray(leaf)
      arrays[f"{name}_{devices}_halves_differ"] = np.asarray(halves_differ)
  np.savez(out, **arrays)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("data_parallel") / "results.npz")
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), out], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  return dict(np.load(out))


@pytest.mark.parametrize("model", _MODELS)
def test_two_devices_train_as_one(results, model):
  one, two = (lambda key, d=d: results[f"{model}_{d}_{key}"] for d in (1, 2))
  # The batches' halves end at different steps, so each device ran its own loop length.
  assert model == "dnc" or bool(two("halves_differ"))
  np.testing.assert_allclose(two("loss"), one("loss"), rtol=2e-5)
  assert np.isfinite(one("loss")).all() and one("loss").shape == (_CHUNKS * 5,)
  np.testing.assert_array_equal(two("errors"), one("errors"))
  count = sum(k.startswith(f"{model}_1_param") for k in results)
  assert count > 0
  for i in range(count):
    np.testing.assert_allclose(two(f"param{i}"), one(f"param{i}"), rtol=1e-4, atol=1e-5)


def test_random_memory_changes_the_run(results):
  # memory_init='random' is used: its losses differ from the constant memory's.
  assert not np.allclose(results["ntm_random_1_loss"], results["ntm_1_loss"], rtol=1e-3)


def test_flat_psum_equals_psum_of_each_array():
  """`_psum_flat` (one all-reduce per dtype) sums a mixed tree as per-array psums do."""
  import jax

  from memjax.training import algorithmic

  rng = np.random.default_rng(0)
  tree = {"w": rng.normal(size=(3, 4, 2)).astype(np.float32),
          "count": rng.integers(0, 9, size=(3,)).astype(np.int32),
          "b": (rng.normal(size=(3,)).astype(np.float32),
                rng.integers(0, 9, size=(3, 5)).astype(np.int32))}
  # vmap with an axis name: psum sums over the mapped axis of size 3, no devices needed.
  got = jax.vmap(lambda t: algorithmic._psum_flat(t, "i"), axis_name="i")(tree)
  got = dict(jax.tree_util.tree_leaves_with_path(got))
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    g = got[path]
    assert g.dtype == x.dtype and g.shape == x.shape, path
    np.testing.assert_allclose(np.asarray(g), np.broadcast_to(x.sum(0), x.shape), rtol=1e-6,
                               err_msg=str(path))


if __name__ == "__main__":
  _child(sys.argv[1])
