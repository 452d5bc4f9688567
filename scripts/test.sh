#!/usr/bin/env bash
# The test suite: installs what it needs into .venv, then runs pytest on all
# cores. Extra arguments go to pytest (e.g. `bash scripts/test.sh -k store`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/env.sh
# One XLA compilation cache for this run, shared by the pytest workers and the
# processes the tests start (the launcher, resume and notebook tests compile the
# same programs several times). It is new for every run and removed after it,
# so nothing compiled by older code is ever reused. Set JAX_COMPILATION_CACHE_DIR
# to choose the directory yourself (then it is kept).
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR="$(mktemp -d -t memjax-xla-cache.XXXXXX)"
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
  export JAX_COMPILATION_CACHE_DIR
fi
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.2}"
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
