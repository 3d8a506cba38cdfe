#!/usr/bin/env bash
# The project's test command (README, CI): a linter, the fast tier (no SGLang server,
# a few minutes), then the tests that start real SGLang on CPU, one server at a time.
# Extra arguments go to both pytest runs (e.g. -x).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "test: ruff check (errors only: syntax, undefined names, unused imports/variables)"
.venv/bin/python -m ruff check .
echo "test: fast tier (-m 'not sglang')"
.venv/bin/python -m pytest -q -m "not sglang" "$@"
echo "test: tests that start real SGLang (-m sglang)"
.venv/bin/python -m pytest -q -m sglang "$@"
