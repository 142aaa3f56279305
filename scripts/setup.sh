#!/usr/bin/env bash
# Sets up a development environment in .venv: torch's CPU build first, then everything else pinned to it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
# torch first and exact: a looser request would pull a multi-GB CUDA build.
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -c constraints.txt -e '.[operator,trainer,dev]'
# checkov conflicts with our pins, so it gets a virtualenv of its own, built once and cached.
.venv/bin/python -m tests.chart.checkov_env
