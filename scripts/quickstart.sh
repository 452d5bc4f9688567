#!/usr/bin/env bash
# The main job: installs what it needs into .venv, then trains a Neural Turing
# Machine on the copy task (lengths 1-20) until its moving-average error falls
# below 0.1 bits per sequence, and prints the final bit error and how it
# generalises to sequences of length 20-100. Running it again resumes (or, once
# trained, only re-evaluates). Extra arguments go to the launcher, e.g.
# `bash scripts/quickstart.sh --config.seed=1`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/env.sh
workdir="${MEMJAX_WORKDIR:-runs/ntm_copy}"
python -m experiments.train --config=experiments/configs/ntm_copy.py --workdir="$workdir" "$@"
echo "metrics: $workdir/metrics.jsonl  plots: $workdir/learning_curve.png $workdir/episode.png"
