#!/usr/bin/env bash
# Sets up, lints and runs every test, timing each phase. `.ci/run` calls exactly this.
# Arguments go to the main pytest run (e.g. scripts/test.sh -k chart).
set -euo pipefail
cd "$(dirname "$0")/.."

timings=()
phase() {  # phase NAME COMMAND...: run it, and remember how long it took
  local name=$1 started=$SECONDS
  shift
  printf '\n==== %s\n' "$name"
  "$@"
  timings+=("$(printf '%-34s %5d s' "$name" $((SECONDS - started)))")
}
report() {
  printf '\n==== phase times\n'
  printf '%s\n' "${timings[@]}"
  printf '%-34s %5d s\n' total "$SECONDS"
}
trap report EXIT

phase "set-up: system packages" scripts/system-packages.sh
phase "set-up: .venv and tool envs" scripts/setup.sh
phase "lint: ruff" bash -c '.venv/bin/ruff check . && .venv/bin/ruff format --check .'
phase "type check: mypy" .venv/bin/mypy
phase "lint: import-linter" .venv/bin/lint-imports
phase "lint: Dockerfiles" .venv/bin/hadolint Dockerfile trainer-image/Dockerfile
phase "lint: crds" bash -c '.venv/bin/kubernetes-validate --strict --quiet crds/*.yaml'
phase "tests" .venv/bin/pytest -p no:cacheprovider --durations=25 "$@"
if [ $# -eq 0 ]; then
  # The trainer's numerics must not depend on one thread count (tests/trainer/conftest.py).
  phase "tests: trainer, 2 torch threads" env KUBETUNE_TEST_TORCH_THREADS=2 \
    .venv/bin/pytest -p no:cacheprovider --durations=10 tests/trainer
fi
