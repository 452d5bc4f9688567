"""The launcher on the algorithmic trainer: bad configs fail fast; SIGKILL/SIGTERM and resume
reproduce an uninterrupted run bit for bit."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments.configs import ntm_copy
from memjax.training import algorithmic
from memjax.training import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "ntm_copy.py")
TINY = ["--config.num_steps=300", "--config.checkpoint_every=50", "--config.log_every=5",
        "--config.stop_at_bit_errors=0.0", "--config.plots=False", "--config.seed=3"]


def _launch(workdir, *extra, **kw):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.train", f"--config={CONFIG}:smoke",
         f"--workdir={workdir}", *TINY, *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for_checkpoint(proc, workdir, after=0, timeout=120):
  """Waits until `proc` has written a checkpoint of a step > `after`; returns that step."""
  ckdir = os.path.join(workdir, "checkpoints")
  start = time.time()
  while time.time() - start < timeout:
    steps = [int(n) for n in os.listdir(ckdir) if n.isdigit()] if os.path.isdir(ckdir) else []
    if steps and max(steps) > after:
      return max(steps)
    if proc.poll() is not None:
      raise AssertionError("run ended before its first checkpoint:\n" + proc.stdout.read())
    time.sleep(0.01)
  raise AssertionError("no checkpoint in time")


def _train_rows(workdir):
  return [(r["step"], r["sequences"], r["loss"], r["bit_errors_per_sequence"])
          for r in metrics.read_metrics(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]


def _eval_rows(workdir):
  return [r for r in metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if "eval_length" in r]


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
  clean, broken = str(tmp_path / "clean"), str(tmp_path / "broken")
  reference = _launch(clean)
  # 1. SIGKILL right after the first checkpoint: nothing gets to clean up.
  victim = _launch(broken)
  first = _wait_for_checkpoint(victim, broken)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert victim.returncode == -signal.SIGKILL
  killed_at = _train_rows(broken)[-1][0]
  assert killed_at < 300
  # 2. Resume, then stop it with SIGTERM: it saves a checkpoint and exits cleanly.
  second = _launch(broken)
  _wait_for_checkpoint(second, broken, after=first)
  second.send_signal(signal.SIGTERM)
  out, _ = second.communicate(timeout=120)
  assert second.returncode == 0, out
  assert f"resuming at step {first}" in out and "stopped at step" in out
  # 3. Resume to the end.
  third = _launch(broken)
  out3, _ = third.communicate(timeout=300)
  assert third.returncode == 0, out3
  ref_out, _ = reference.communicate(timeout=300)
  assert reference.returncode == 0, ref_out

  rows, ref_rows = _train_rows(broken), _train_rows(clean)
  assert [r[0] for r in ref_rows] == list(range(5, 301, 5))
  assert rows == ref_rows  # step for step, bit for bit
  assert _eval_rows(broken) == _eval_rows(clean)
  assert "| 8 |" in out3


def test_launcher_rejects_bad_values_in_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.train", f"--config={CONFIG}",
         f"--workdir={tmp_path}", "--config.model.shift_range=100"]
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert errors == ["error: bad config: shift_range 100 allows 201 shifts, more than the "
                    "memory_size N=128 slots"]
  assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize("override, match", [
    (lambda c: setattr(c.model, "memory_size", 0), "memory_size must be an integer >= 1"),
    (lambda c: setattr(c.model, "shift_range", 64), "shift_range 64 allows 129 shifts"),
    (lambda c: setattr(c.model, "controller", "gru"), "controller must be one of"),
    (lambda c: setattr(c.model, "name", "rnn"), "model.name must be one of"),
    (lambda c: setattr(c.task, "name", "sorting"), "task.name must be one of"),
    (lambda c: setattr(c.task, "min_length", 0), "copy length"),
    (lambda c: setattr(c, "log_every", 7), "multiple of steps_per_call"),
    (lambda c: setattr(c.optimizer, "name", "sgd"), "optimizer.name"),
    (lambda c: setattr(c.optimizer, "learning_rate", -1.0), "learning_rate"),
    (lambda c: setattr(c, "batch_size", 0), "batch_size"),
])
def test_validate_config(override, match):
  config = ntm_copy.get_config()
  algorithmic.validate_config(config)
  override(config)
  with pytest.raises(ValueError, match=match):
    algorithmic.validate_config(config)


def test_unknown_key_is_rejected_by_the_locked_config(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.train", f"--config={CONFIG}",
         f"--workdir={tmp_path}", "--config.model.memroy_size=3"]
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode != 0
  assert "memroy_size" in done.stderr


@pytest.mark.parametrize("name", algorithmic.OPTIMIZERS)
def test_scaling_the_learning_rate_scales_the_next_update(name):
  # Adam's and RMSProp's updates are linear in the learning rate, so a state scaled
  # by 1/4 must move every parameter exactly 1/4 as far (before the fix the scaling
  # silently did nothing: optax's state class had been renamed).
  config = ntm_copy.get_config("smoke")
  config.optimizer.name = name
  optimizer = algorithmic.make_optimizer(config)
  params = {"w": np.array([0.5, -1.0, 2.0], np.float32)}
  grads = {"w": np.array([0.3, -0.02, 1e-3], np.float32)}
  state = optimizer.init(params)
  scaled = algorithmic._scale_learning_rate(state, 0.25)
  lr = [x for x in jax.tree.leaves(scaled) if x.shape == () and
        np.isclose(x, 0.25 * config.optimizer.learning_rate)]
  assert lr, jax.tree.leaves(scaled)
  full, _ = optimizer.update(grads, state, params)
  quarter, _ = optimizer.update(grads, scaled, params)
  np.testing.assert_allclose(quarter["w"], 0.25 * full["w"], rtol=1e-6)
  assert np.all(np.abs(full["w"]) > 0)
  with pytest.raises(ValueError, match="no injected learning_rate"):
    algorithmic._scale_learning_rate((), 0.5)
