#!/usr/bin/env bash
# Creates .venv at the repository root (if absent) and installs kerasbn into it, editable,
# with the extras named in $1 (e.g. "[test]"). pip and the build backend talk a lot: their
# output goes to .venv/install.log and is shown only when the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! { .venv/bin/python -m pip install --quiet --upgrade pip &&
       .venv/bin/python -m pip install --quiet -e ".${1:-}"; } > .venv/install.log 2>&1; then
  cat .venv/install.log >&2
  echo "error: installing kerasbn into .venv failed (pip's output above)" >&2
  exit 1
fi
