#!/usr/bin/env bash
# The project's test command (README.md): lint, type check, then the test suite.
# Run it inside the environment where the package is installed with its [dev] extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
"$PY" -m ruff check lipar_core server tests
"$PY" -m ruff format --check lipar_core server tests
"$PY" -m mypy
"$PY" -m pytest "$@"
