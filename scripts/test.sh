#!/usr/bin/env bash
# Sets up, lints and runs every test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/system-packages.sh
scripts/setup.sh
command -v kubectl >/dev/null || { echo "kubectl is required on PATH for the kubectl tests" >&2; exit 1; }

echo "== ruff";          .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy";          .venv/bin/mypy
echo "== import-linter"; .venv/bin/lint-imports
echo "== crds";          .venv/bin/kubernetes-validate --strict --quiet crds/*.yaml
echo "== pytest";        .venv/bin/pytest -p no:cacheprovider "$@"
