# Shared by setup.sh and lock.sh (sourced, not run).

PIP_VERSION=26.3
TORCH_VERSION=2.13.0+cpu
TORCH_CPU_INDEX=${KUBETUNE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
# Where a torch CPU wheel may already lie (this workplace keeps one in /opt/wheels).
TORCH_WHEEL_DIRS=${KUBETUNE_TORCH_WHEEL_DIR:-/opt/wheels}

step() { printf '\n== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# install_cpu_torch PYTHON: torch's CPU build, chosen explicitly, never a CUDA build by accident.
# The version carries its +cpu label, which only the CPU index and a CPU wheel offer: PyPI has none, so a
# resolver can never satisfy it with the multi-GB CUDA build. Its dependencies come from the lock.
install_cpu_torch() {
  local python=$1 wheel=""
  if "$python" -c "import sys, torch; sys.exit(torch.__version__ != '$TORCH_VERSION')" 2>/dev/null; then
    echo "torch $TORCH_VERSION already installed"
    return
  fi
  if "$python" -c "import urllib.request as u; u.urlopen('$TORCH_CPU_INDEX/torch/', timeout=10)" 2>/dev/null; then
    echo "torch $TORCH_VERSION from $TORCH_CPU_INDEX"
    "$python" -m pip install --quiet --no-deps --index-url "$TORCH_CPU_INDEX" "torch==$TORCH_VERSION"
    return
  fi
  for dir in $TORCH_WHEEL_DIRS; do
    for candidate in "$dir"/torch-"$TORCH_VERSION"-cp311-cp311-*.whl; do
      [ -f "$candidate" ] && wheel=$candidate && break 2
    done
  done
  if [ -n "$wheel" ]; then
    echo "torch $TORCH_VERSION from the local wheel $wheel ($TORCH_CPU_INDEX is unreachable)"
    "$python" -m pip install --quiet --no-deps --no-index --find-links "$(dirname "$wheel")" "torch==$TORCH_VERSION"
  else
    die "no torch $TORCH_VERSION: $TORCH_CPU_INDEX is unreachable and no wheel lies in $TORCH_WHEEL_DIRS.
Put torch-$TORCH_VERSION-cp311-cp311-manylinux_2_28_x86_64.whl in a folder and set KUBETUNE_TORCH_WHEEL_DIR to it,
or KUBETUNE_TORCH_INDEX to a reachable mirror of the CPU index."
  fi
}

# new_venv DIR: a virtualenv with a current pip (python3-venv is checked by system-packages.sh).
new_venv() {
  python3 -m venv "$1"
  upgrade_pip "$1/bin/python"
}

upgrade_pip() { "$1" -m pip install --quiet --upgrade "pip==$PIP_VERSION"; }
