#!/usr/bin/env bash
# Creates .venv (if absent), installs kerasbn with its test extra into it, runs every test.
set -euo pipefail
cd "$(dirname "$0")"
launch/install_venv.sh "[test]"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec .venv/bin/python -m pytest -q --durations=25 tests "$@"
