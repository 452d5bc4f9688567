"""experiments.train: a config naming no known trainer fails in one line, before compiling."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, body, *flags):
  config = tmp_path / "config.py"
  config.write_text("import ml_collections\n\n\ndef get_config(arg=None):\n"
                    "  del arg\n  config = ml_collections.ConfigDict()\n" + body +
                    "  return config\n")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "experiments.train", f"--config={config}",
       f"--workdir={tmp_path / 'work'}", *flags],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_unknown_trainer_is_a_one_line_error(tmp_path):
  proc = _run(tmp_path, "  config.trainer = 'no_such_trainer'\n  config.seed = 0\n")
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert lines == ["error: bad config: unknown trainer 'no_such_trainer': "
                   "no module memjax.training.no_such_trainer"]


def test_missing_trainer_field(tmp_path):
  proc = _run(tmp_path, "  config.seed = 0\n")
  assert proc.returncode == 2
  assert "no `trainer` field" in proc.stderr


def test_unknown_override_is_rejected(tmp_path):
  proc = _run(tmp_path, "  config.trainer = 'x'\n  config.seed = 0\n", "--config.sead=1")
  assert proc.returncode != 0
  assert "sead" in proc.stderr
