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
from memjax.training import checkpoint
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
@pytest.mark.parametrize("devices", [1, 2])
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, devices):
  # devices=2: each step split across two CPU devices (the shard_map data-parallel step).
  clean, broken = str(tmp_path / "clean"), str(tmp_path / "broken")
  extra = [f"--config.cpu_devices={devices}"]
  reference = _launch(clean, *extra)
  # 1. SIGKILL right after the first checkpoint: nothing gets to clean up.
  victim = _launch(broken, *extra)
  first = _wait_for_checkpoint(victim, broken)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert victim.returncode == -signal.SIGKILL
  killed_at = _train_rows(broken)[-1][0]
  assert killed_at < 300
  # 2. Resume, then stop it with SIGTERM: it saves a checkpoint and exits cleanly.
  second = _launch(broken, *extra)
  _wait_for_checkpoint(second, broken, after=first)
  second.send_signal(signal.SIGTERM)
  out, _ = second.communicate(timeout=120)
  assert second.returncode == 0, out
  assert f"resuming at step {first}" in out and "stopped at step" in out
  # 3. Resume to the end.
  third = _launch(broken, *extra)
  out3, _ = third.communicate(timeout=300)
  assert third.returncode == 0, out3
  ref_out, _ = reference.communicate(timeout=300)
  assert reference.returncode == 0, ref_out

  rows, ref_rows = _train_rows(broken), _train_rows(clean)
  assert [r[0] for r in ref_rows] == list(range(5, 301, 5))
  assert rows == ref_rows  # step for step, bit for bit
  assert _eval_rows(broken) == _eval_rows(clean)
  assert "| 8 |" in out3
  assert f"({devices} devices)" in out3


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


@pytest.mark.parametrize("name", algorithmic.OPTIMIZERS)
def test_learning_rate_decay_scales_each_update_by_the_schedule(name):
  # lr x max(0.5 ** (count / 2), 0.3): counts 0..4 give 1, 0.7071, 0.5, 0.3536, 0.3 (floor).
  constant = ntm_copy.get_config("smoke")
  constant.optimizer.name = name
  decayed = ntm_copy.get_config("smoke")
  decayed.optimizer.name = name
  decayed.optimizer.lr_decay_every, decayed.optimizer.lr_floor = 2, 0.3
  algorithmic.validate_config(decayed)
  params = {"w": np.array([0.5, -1.0, 2.0], np.float32)}
  rng = np.random.default_rng(0)
  opts = [algorithmic.make_optimizer(c) for c in (constant, decayed)]
  states = [o.init(params) for o in opts]
  # Scaling the injected learning rate (steps_after_convergence) still works with a decay.
  assert algorithmic._scale_learning_rate(states[1], 1.0) is not None
  for want in [1.0, 2 ** -0.5, 0.5, 2 ** -1.5, 0.3]:  # counts 0..4
    grads = {"w": rng.normal(size=3).astype(np.float32)}
    (u0, states[0]), (u1, states[1]) = (o.update(grads, st, params)
                                        for o, st in zip(opts, states))
    np.testing.assert_allclose(u1["w"], want * u0["w"], rtol=1e-5)
  for key, value, match in (("lr_decay_every", -1, "lr_decay_every"),
                            ("lr_decay_rate", 1.5, "lr_decay_rate"),
                            ("lr_floor", -0.1, "lr_floor")):
    bad = ntm_copy.get_config("smoke")
    bad.optimizer.lr_decay_every = 2
    setattr(bad.optimizer, key, value)
    with pytest.raises(ValueError, match=match):
      algorithmic.validate_config(bad)


def _collapsing_config(**overrides):
  # Meets a loose criterion at step 35, then a 300x learning rate wrecks the model: the
  # moving average is back above the criterion from step 45 to the end (step 55).
  c = ntm_copy.get_config("smoke")
  c.stop_at_bit_errors, c.steps_after_convergence, c.lr_after_convergence = 7.0, 20, 300.0
  c.plots, c.num_steps, c.checkpoint_every = False, 60, 10
  for key, value in overrides.items():
    setattr(c, key, value)
  return c


@pytest.mark.slow
def test_a_model_that_gets_worse_past_the_criterion_is_not_the_result(tmp_path, capsys):
  config = _collapsing_config()
  summary = algorithmic.train_and_evaluate(config, str(tmp_path / "a"))
  assert summary["converged_step"] == 35 and summary["step"] == 55
  assert summary["bit_errors_per_sequence"] >= 7.0
  kept = summary["params_step"]
  assert 35 <= kept < 55
  assert f"evaluating step {kept}" in capsys.readouterr().out
  assert {r["params_step"] for r in _eval_rows(tmp_path / "a")} == {kept}
  # A run that simply ends at that step evaluates the same parameters, so the same table.
  stopped = algorithmic.train_and_evaluate(_collapsing_config(num_steps=kept), str(tmp_path / "b"))
  assert stopped["step"] == stopped["params_step"] == kept
  assert summary["eval"] == stopped["eval"]
  # The choice is made on validation sequences: the final model wins when it is better
  # there, and ties go to it too.
  exp = algorithmic.build(config)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "a" / "checkpoints"))
  _, state = ckpt.restore_latest(algorithmic._initial_state(exp))
  ckpt.close()
  good, bad = state["kept_params"], state["params"]
  assert int(state["kept_step"]) == kept
  length, good_errors = algorithmic.validation_errors(exp, good)
  assert length == 4 and good_errors < algorithmic.validation_errors(exp, bad)[1]
  chosen, chosen_step, note = algorithmic.select_result(exp, good, 55, bad, kept)
  assert chosen is good and chosen_step == 55 and "evaluating step 55" in note
  chosen, chosen_step, _ = algorithmic.select_result(exp, bad, 55, bad, kept)
  assert chosen is bad and chosen_step == 55
  assert algorithmic.select_result(exp, bad, 55, good, -1)[:2] == (bad, 55)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["before kept parameters", "before kept validation"])
def test_a_checkpoint_without_kept_parameters_still_resumes(tmp_path, capsys, version):
  config = _collapsing_config()
  full = str(tmp_path / "full")
  reference = algorithmic.train_and_evaluate(config, full)
  exp = algorithmic.build(config)
  template = algorithmic._initial_state(exp)
  ckpt = checkpoint.Checkpointer(os.path.join(full, "checkpoints"))
  assert ckpt.steps() == [40, 50, 55]
  # Rewrite the step-40 checkpoint as an older version of the trainer wrote it.
  state = ckpt._manager.restore(40, args=checkpoint.ocp.args.StandardRestore(template))
  ckpt.close()
  old = str(tmp_path / "old")
  legacy = checkpoint.Checkpointer(os.path.join(old, "checkpoints"))
  # The keys the trainer did not write then.
  dropped = algorithmic.VALIDATION_KEYS
  if version == "before kept parameters":
    dropped += algorithmic.KEPT_KEYS + algorithmic.GUARD_KEYS
  legacy.save(40, {k: v for k, v in state.items() if k not in dropped})
  legacy.close()
  with open(os.path.join(full, "metrics.jsonl")) as src, \
       open(os.path.join(old, "metrics.jsonl"), "w") as dst:
    dst.write(src.read())
  capsys.readouterr()
  resumed = algorithmic.train_and_evaluate(config, old)
  assert "failed to restore" not in capsys.readouterr().out
  assert _train_rows(old) == _train_rows(full)  # step for step, bit for bit
  assert reference["params_step"] == 35
  if version == "before kept parameters":
    # The old checkpoint did not know step 35 met the criterion: the final model is evaluated.
    assert resumed["params_step"] == 55
  else:  # it kept step 35 (without its validation errors), which nothing later beat
    assert resumed["params_step"] == 35


@pytest.mark.slow
def test_random_memory_init_trains_evaluates_plots_and_resumes(tmp_path):
  # memory_init='random' draws each sequence's memory from a key of its own (a pure
  # function of seed, stream and step), so a resumed run draws the same memories.
  def config(num_steps):
    c = ntm_copy.get_config("smoke")
    c.model.memory_init, c.num_steps, c.checkpoint_every = "random", num_steps, 10
    c.stop_at_bit_errors = None
    return c

  full, part = str(tmp_path / "full"), str(tmp_path / "part")
  reference = algorithmic.train_and_evaluate(config(30), full)
  algorithmic.train_and_evaluate(config(20), part)
  resumed = algorithmic.train_and_evaluate(config(30), part)
  assert [r[0] for r in _train_rows(full)] == list(range(5, 31, 5))
  assert _train_rows(part) == _train_rows(full)  # step for step, bit for bit
  assert resumed["eval"] == reference["eval"]
  assert all(np.isfinite(r["bit_errors_per_sequence"]) for r in _eval_rows(full))
  assert os.path.exists(os.path.join(full, "episode.png"))
