#!/usr/bin/env bash
# The main job: installs what it needs into .venv, then runs memjax's demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/env.sh
python -m experiments.demo "$@"
