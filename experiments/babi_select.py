r"""Per bAbI task, the per-task or the joint memory network, chosen on validation.

  python -m experiments.babi_select --per_task=runs/babi_table --joint=runs/babi_joint \
      --workdir=runs/babi_select

Reads `babi_table.json` of a `memn2n_babi.py:table` run and of a
`memn2n_babi.py:joint` run, takes for each task the system with the lower
validation error (ties: the joint one; see
`memjax.training.babi.select_per_task`), and writes `babi_select.md` and
`babi_select.json` into the workdir. Nothing is trained; test errors are
only reported.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags

from memjax.training import babi

_PER_TASK = flags.DEFINE_string("per_task", None, "Workdir of a memn2n_babi.py:table run.")
_JOINT = flags.DEFINE_string("joint", None, "Workdir of a memn2n_babi.py:joint run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the combined table goes.")
flags.mark_flags_as_required(["per_task", "joint", "workdir"])


def _summary(workdir: str, joint: bool) -> dict:
  path = os.path.join(workdir, "babi_table.json")
  if not os.path.exists(path):
    raise app.UsageError(f"{path} not found: run experiments.train with memn2n_babi.py:"
                         f"{'joint' if joint else 'table'} there first")
  with open(path) as f:
    summary = json.load(f)
  if bool(summary.get("joint")) != joint:
    raise app.UsageError(f"{path} is {'not ' if joint else ''}a joint run")
  return summary


def main(argv):
  del argv
  selection = babi.select_per_task(_summary(_PER_TASK.value, False),
                                   _summary(_JOINT.value, True))
  os.makedirs(_WORKDIR.value, exist_ok=True)
  markdown = babi.selection_markdown(selection)
  with open(os.path.join(_WORKDIR.value, "babi_select.md"), "w") as f:
    f.write(markdown)
  with open(os.path.join(_WORKDIR.value, "babi_select.json"), "w") as f:
    json.dump(selection, f, indent=1)
  print(markdown)
  print(f"mean test error {selection['mean_test_error']:.1f} %, "
        f"{selection['failed_tasks']} tasks failed (> 5 %); joint model on tasks "
        f"{selection['joint_tasks']}")


if __name__ == "__main__":
  app.run(main)
