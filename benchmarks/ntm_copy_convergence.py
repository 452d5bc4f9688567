r"""Wall time from launch to convergence of the NTM on copy, over several seeds.

  flock -x /work/cpu.lock python -m benchmarks.ntm_copy_convergence --seeds=0,1,2,3,4

Each seed is one fresh process, exactly the quickstart's command plus
`--config.seed=S`:

  python -m experiments.train --config=experiments/configs/ntm_copy.py --workdir=DIR

Convergence is the config's stopping criterion: the moving average of bit
errors per sequence over the last 1,000 training sequences below 0.1. The
time reported is the trainer's `wall_time` on its `converged` row of
metrics.jsonl: seconds since the process was launched (interpreter start,
imports and compilation included). The generalisation table of each run (its
evaluation after training) is collected too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app
from absl import flags

from memjax.training import metrics

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds, one run each.")
_CONFIG = flags.DEFINE_string("config", "experiments/configs/ntm_copy.py", "Config file.")
_EXTRA = flags.DEFINE_list("overrides", [], "Extra --config.key=value flags for every run.")
_KEEP = flags.DEFINE_string("workdir", None, "Where runs go (default: a temporary directory).")
_CAP = flags.DEFINE_float("max_seconds", 150.0, "A run still training after this many seconds "
                          "gets SIGTERM (it saves a checkpoint and stops) and counts as not "
                          "converged.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_seed(seed: int, workdir: str) -> dict:
  cmd = [sys.executable, "-m", "experiments.train", f"--config={_CONFIG.value}",
         f"--workdir={workdir}", f"--config.seed={seed}", *_EXTRA.value]
  env = dict(os.environ, PYTHONPATH=ROOT)
  start = time.time()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    _, err = proc.communicate(timeout=_CAP.value)
  except subprocess.TimeoutExpired:
    proc.terminate()
    _, err = proc.communicate()
  total = time.time() - start
  if proc.returncode not in (0, -15):
    raise RuntimeError(f"seed {seed} failed:\n{err[-3000:]}")
  rows = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  train = [r for r in rows if "loss" in r]
  converged = [r for r in train if r.get("converged")]
  eval_rows = [r for r in rows if "eval_length" in r]
  evals = {r["eval_length"]: r["bit_errors_per_sequence"] for r in eval_rows}
  return {"seed": seed, "converged": bool(converged),
          "wall_to_convergence": converged[0]["wall_time"] if converged else float("nan"),
          "step": train[-1]["step"], "sequences": train[-1]["sequences"],
          "bit_errors": train[-1]["bit_errors_per_sequence"],
          "nan": any(isinstance(r["loss"], str) for r in train),
          "process_seconds": total, "eval": evals,
          # the step whose parameters were evaluated (the last one meeting the criterion)
          "params_step": eval_rows[-1].get("params_step", train[-1]["step"]) if eval_rows
                         else None}


def main(argv):
  del argv
  base = _KEEP.value or tempfile.mkdtemp(prefix="ntm_copy_convergence_")
  results = []
  print("| seed | converged | steps | sequences | bit errors | launch to convergence (s) "
        "| whole process (s) | evaluated step | eval 20 / 40 / 60 / 80 / 100 |")
  print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
  for seed in (int(s) for s in _SEEDS.value):
    r = run_seed(seed, os.path.join(base, f"seed{seed}"))
    results.append(r)
    ev = " / ".join(f"{r['eval'].get(n, float('nan')):.2f}" for n in (20, 40, 60, 80, 100))
    print(f"| {seed} | {r['converged']} | {r['step']} | {r['sequences']} | "
          f"{r['bit_errors']:.3f} | {r['wall_to_convergence']:.1f} | "
          f"{r['process_seconds']:.1f} | {r['params_step']} | {ev} |", flush=True)
  # A run that did not converge counts as slower than any that did.
  times = [r["wall_to_convergence"] if r["converged"] else np.inf for r in results]
  print(f"\nconverged: {sum(r['converged'] for r in results)}/{len(results)}, NaN runs: "
        f"{sum(r['nan'] for r in results)}, median launch-to-convergence "
        f"{np.median(times):.1f} s (not converged = infinitely slow)")
  for n in (40, 60, 80, 100):
    vals = [r["eval"][n] for r in results if n in r["eval"]]
    if vals:
      print(f"length {n}: median {np.median(vals):.2f} bit errors per sequence over "
            f"{len(vals)} converged seeds (worst {np.max(vals):.2f})")
  print(f"runs in {base}")


if __name__ == "__main__":
  app.run(main)
