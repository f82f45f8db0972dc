#!/usr/bin/env bash
# Creates .venv (if absent), installs kerasbn with its test extra into it, runs every test.
set -euo pipefail
cd "$(dirname "$0")"
launch/install_venv.sh "[test]"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# Two test processes (pytest-xdist): on CI's 2 cores the suite runs 1.3x sooner than in one,
# since much of a test is process start-up and I/O; TEST_WORKERS=1 runs it in one.
exec .venv/bin/python -m pytest -q --durations=25 --numprocesses="${TEST_WORKERS:-2}" tests "$@"
