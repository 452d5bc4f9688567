#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv and
# activates it. Sourced by the other scripts; safe to run again: it installs
# only when setup.cfg changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MEMJAX_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[memjax] creating $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.memjax-install-stamp"
want="$(cat "$root/setup.cfg" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[memjax] installing memjax and its dependencies into $venv (about a minute)" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -e "$root[dev]" >&2
  echo "$want" > "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
