#!/usr/bin/env bash
# A real-cluster end-to-end run of examples/02-qlora-kueue on kind (e2e/README.md says what it proves):
# a kind cluster, the operator and trainer images built here and loaded into it, Kueue, KWOK with fake
# GPU nodes, a tiny in-cluster S3, the chart, the example; then it waits for the FineTuneJob to go
# Queued -> Running and deletes the cluster (--keep keeps it).
#
#   e2e/kind/run.sh                      # needs docker, kind, kubectl, helm and the dev venv
#   e2e/kind/run.sh --dry-run [--out DIR]   # no docker or cluster: writes and checks every manifest
#
# Options: --dry-run, --out DIR (default a temporary folder), --keep (leave the cluster), --name NAME
# (the kind cluster, default kubetune-e2e), --no-build (use the images already in docker), --example FILE
# (another FineTuneJob), --extra FILE (one more manifest to check and apply, repeatable), --timeout SECONDS.
set -euo pipefail

# -- Pinned versions: the only place they are named ------------------------------------------------------
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.35.8}" # Kubernetes 1.35 (kind v0.31 or newer)
KUEUE_VERSION="${KUEUE_VERSION:-v0.19.5}"                  # API kueue.x-k8s.io/v1beta2
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"                     # API kwok.x-k8s.io/v1alpha1
# The S3 stand-in's image is pinned in e2e/kind/s3.yaml (motoserver/moto:5.2.5, moto as in locks/dev.txt).
KUEUE_MANIFEST="https://github.com/kubernetes-sigs/kueue/releases/download/${KUEUE_VERSION}/manifests.yaml"
KWOK_MANIFEST="https://github.com/kubernetes-sigs/kwok/releases/download/${KWOK_VERSION}/kwok.yaml"
KWOK_STAGES="https://github.com/kubernetes-sigs/kwok/releases/download/${KWOK_VERSION}/stage-fast.yaml"
OPERATOR_IMAGE="kubetune/operator:e2e" # the tags values-kind.yaml and the seed Job name
TRAINER_IMAGE="kubetune/trainer:e2e"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
RELEASE="kubetune"
RELEASE_NAMESPACE="kubetune-system"
VALUES="$HERE/values-kind.yaml"

dry_run=false
keep=false
build=true
name="kubetune-e2e"
out=""
example="$REPO/examples/02-qlora-kueue/finetunejob.yaml"
extras=()
timeout_seconds=900

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() {
  echo "run.sh: $*" >&2
  exit 1
}
step() { printf '\n==> %s\n' "$*"; }

while (($#)); do
  case "$1" in
    --dry-run) dry_run=true ;;
    --keep) keep=true ;;
    --no-build) build=false ;;
    --name) name="${2:?--name needs a value}" && shift ;;
    --out) out="${2:?--out needs a folder}" && shift ;;
    --example) example="${2:?--example needs a file}" && shift ;;
    --extra) extras+=("${2:?--extra needs a file}") && shift ;;
    --timeout) timeout_seconds="${2:?--timeout needs seconds}" && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
[[ "$timeout_seconds" =~ ^[0-9]+$ ]] || die "--timeout takes whole seconds, not '$timeout_seconds'"
[[ -f "$example" ]] || die "--example $example: no such file"

# Kubernetes major.minor of the node image, for kubernetes-validate and helm's .Capabilities.
kube_version="${KIND_NODE_IMAGE##*:v}"
kube_version="${kube_version%%@*}"
kube_version="$(cut -d. -f1,2 <<<"$kube_version")"
[[ "$kube_version" =~ ^[0-9]+\.[0-9]+$ ]] || die "KIND_NODE_IMAGE=$KIND_NODE_IMAGE has no vMAJOR.MINOR tag"

# -- Preflight ------------------------------------------------------------------------------------------
need() { # need COMMAND WHAT-TO-INSTALL
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: install $2"
}
[[ -x "$PYTHON" ]] || die "$PYTHON not found: create the dev venv with scripts/setup.sh (or set PYTHON)"
"$PYTHON" -c 'import kubernetes_validate, kubetune_sandbox, yaml' 2>/dev/null ||
  die "$PYTHON lacks kubernetes-validate or kubetune-sandbox: rerun scripts/setup.sh"
if ! $dry_run; then
  need docker "Docker Engine (https://docs.docker.com/engine/install/) or Docker Desktop"
  docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer (start Docker; is your user in the docker group?)"
  need kind "kind v0.31+ (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
  need kubectl "kubectl $kube_version (https://kubernetes.io/docs/tasks/tools/)"
  need helm "Helm 3.8+ or 4 (https://helm.sh/docs/intro/install/)"
  need curl "curl (your distribution's package)"
fi

# -- The manifests, written and checked before anything touches a cluster -------------------------------
if [[ -z "$out" ]]; then
  out="$(mktemp -d "${TMPDIR:-/tmp}/kubetune-e2e.XXXXXX")"
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
step "writing the manifests to $out"
write_args=(write --out "$out" --example "$example")
for extra in ${extras[@]+"${extras[@]}"}; do
  [[ -f "$extra" ]] || die "--extra $extra: no such file"
  write_args+=(--extra "$extra")
done
"$PYTHON" "$HERE/manifests.py" "${write_args[@]}"
if command -v helm >/dev/null 2>&1; then
  helm template "$RELEASE" "$REPO/charts/kubetune" --namespace "$RELEASE_NAMESPACE" --values "$VALUES" \
    --kube-version "$kube_version.0" >"$out/50-chart.yaml"
  echo "rendered charts/kubetune into $out/50-chart.yaml (helm template)"
else
  "$PYTHON" "$HERE/manifests.py" render-chart --out "$out" --values "$VALUES"
fi
step "checking them (Kubernetes $kube_version)"
"$PYTHON" "$HERE/manifests.py" validate --out "$out" --kube-version "$kube_version"

if $dry_run; then
  echo
  echo "dry run: every manifest above is valid; a real run would also apply, unchecked here:"
  echo "  $KUEUE_MANIFEST"
  echo "  $KWOK_MANIFEST"
  echo "  $KWOK_STAGES (less its pod-complete Stage)"
  echo "manifests: $out"
  exit 0
fi

# -- The cluster ----------------------------------------------------------------------------------------
context="kind-$name"
k() { kubectl --context "$context" "$@"; }
created=false
job_name="$("$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["name"])' "$out/60-example.yaml")"
job_namespace="$("$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["namespace"])' "$out/60-example.yaml")"

diagnose() {
  echo "--- FineTuneJob, events, pods, Kueue workloads and operator logs, for the failure above ---" >&2
  k get finetunejob -n "$job_namespace" "$job_name" -o yaml >&2 || true
  k get events -n "$job_namespace" --sort-by=.lastTimestamp >&2 || true
  k get pods -A -o wide >&2 || true
  k get workloads -n "$job_namespace" -o wide >&2 || true
  k logs -n "$RELEASE_NAMESPACE" -l app.kubernetes.io/name=kubetune --tail=100 --prefix >&2 || true
}
cleanup() {
  local status=$?
  if $created; then
    ((status == 0)) || diagnose
    if $keep; then
      echo "kept the cluster: kubectl --context $context ...; delete it with: kind delete cluster --name $name"
    else
      step "deleting the kind cluster $name (--keep keeps it)"
      kind delete cluster --name "$name" || true
    fi
  fi
  exit "$status"
}
trap cleanup EXIT

if kind get clusters 2>/dev/null | grep -qx "$name"; then
  die "a kind cluster named $name exists already: delete it (kind delete cluster --name $name) or pass --name"
fi
step "creating the kind cluster $name ($KIND_NODE_IMAGE)"
created=true
kind create cluster --name "$name" --config "$out/00-kind-cluster.yaml" --image "$KIND_NODE_IMAGE" --wait 180s

if $build; then
  step "building the operator and trainer images (the trainer's CUDA base is several GB: first build takes a while)"
  docker build -t "$OPERATOR_IMAGE" -f "$REPO/Dockerfile" "$REPO"
  docker build -t "$TRAINER_IMAGE" -f "$REPO/trainer-image/Dockerfile" "$REPO"
fi
step "loading the images into kind"
kind load docker-image --name "$name" "$OPERATOR_IMAGE" "$TRAINER_IMAGE"

step "installing Kueue $KUEUE_VERSION"
k apply --server-side -f "$KUEUE_MANIFEST"
k wait --for=condition=Available deployment/kueue-controller-manager -n kueue-system --timeout=300s

step "installing KWOK $KWOK_VERSION and its fake GPU nodes"
k apply --server-side -f "$KWOK_MANIFEST"
k wait --for=condition=Established crd/stages.kwok.x-k8s.io --timeout=60s
k apply --server-side -f "$KWOK_STAGES"
# Without it KWOK would mark a training pod Succeeded at once, with no trainer summary to read.
k delete stage pod-complete --ignore-not-found
k wait --for=condition=Available deployment/kwok-controller -n kube-system --timeout=300s
k apply -f "$out/10-kwok-nodes.yaml"
k wait --for=condition=Ready node -l type=kwok --timeout=120s

retry_apply() { # Kueue's webhook answers a little after its Deployment is Available
  local file="$1" deadline=$((SECONDS + 120))
  until k apply --server-side -f "$file"; do
    ((SECONDS < deadline)) || die "could not apply $file within 120 s (is Kueue's webhook up?)"
    sleep 3
  done
}
step "creating the namespace, priority classes and Kueue queues"
retry_apply "$out/20-queues.yaml"

step "starting the S3 stand-in and uploading the dataset"
k apply -f "$out/30-s3.yaml"
k rollout status deployment/s3 -n "$job_namespace" --timeout=300s
k apply -f "$out/40-seed-data.yaml"
k wait --for=condition=Complete job/e2e-seed-s3 -n "$job_namespace" --timeout=300s

step "installing the chart"
helm install "$RELEASE" "$REPO/charts/kubetune" --kube-context "$context" --namespace "$RELEASE_NAMESPACE" \
  --create-namespace --values "$VALUES" --wait --timeout 5m

step "applying the example ($job_namespace/$job_name)"
k apply -f "$out/60-example.yaml"
for extra in "$out"/90-extra-*.yaml; do
  if [[ -e "$extra" ]]; then k apply -f "$extra"; fi
done

step "waiting up to ${timeout_seconds}s for $job_name to go Queued -> Running"
deadline=$((SECONDS + timeout_seconds))
phase=""
seen=""
while :; do
  current="$(k get finetunejob -n "$job_namespace" "$job_name" -o 'jsonpath={.status.phase}' 2>/dev/null || true)"
  if [[ -n "$current" && "$current" != "$phase" ]]; then
    phase="$current"
    seen="${seen:+$seen -> }$phase"
    echo "$(date +%T) phase $phase"
  fi
  case "$phase" in
    Running) break ;;
    Failed | Succeeded) die "$job_name ended $phase before it was seen Running (phases: $seen)" ;;
  esac
  ((SECONDS < deadline)) || die "$job_name not Running after ${timeout_seconds}s (phases: $seen)"
  sleep 2
done

# The poll may miss a short Queued phase; the operator's Queued event and Kueue's admission cannot be missed.
queued_events="$(k get events -n "$job_namespace" -o name \
  --field-selector "involvedObject.kind=FineTuneJob,involvedObject.name=$job_name,reason=Queued")"
[[ -n "$queued_events" ]] || die "$job_name reached Running without the operator's Queued event"
admitted="$(k get workloads -n "$job_namespace" \
  -o 'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Admitted")].status}{"\n"}{end}')"
grep -qx True <<<"$admitted" || die "no Kueue Workload in $job_namespace is Admitted"

step "passed: $job_name went ${seen} (Queued event recorded, Kueue Workload admitted)"
k get finetunejob -n "$job_namespace" "$job_name" -o wide
k get finetunejob -n "$job_namespace" "$job_name" \
  -o 'jsonpath={range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
k get workloads,jobs,pods -n "$job_namespace" -o wide
