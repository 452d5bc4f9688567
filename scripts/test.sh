#!/usr/bin/env bash
# The test suite: installs what it needs into .venv, then runs pytest on all
# cores. Extra arguments go to pytest (e.g. `bash scripts/test.sh -k store`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/env.sh
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-$([ -n "${CI:-}" ] && echo ci || echo dev)}"
workers="${PYTEST_WORKERS:-$(python -c 'import os; print(max(1, min(os.cpu_count() or 1, 4)))')}"
set +e
python -m pytest -q -n "$workers" --durations=15 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "[memjax] pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
