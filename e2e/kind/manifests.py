"""The manifests e2e/kind/run.sh applies: written into one folder, then checked offline before any cluster.

    python e2e/kind/manifests.py write --out DIR [--example FILE] [--extra FILE ...]
    python e2e/kind/manifests.py render-chart --out DIR --values FILE   (where no helm binary is installed)
    python e2e/kind/manifests.py validate --out DIR --kube-version 1.35

What `validate` checks, file by file in name order, stopping at the first invalid document:
- built-in kinds: kubernetes-validate's OpenAPI schemas of that Kubernetes version, strict (unknown fields
  fail), as kube-apiserver's strict field validation would;
- kubetune.dev custom resources: the admission of the committed CRDs (crds/), the emulator's CRDAdmission,
  which prunes, defaults and runs the schemas and CEL rules as kube-apiserver does;
- third-party kinds (kind's Cluster config, Kueue, KWOK): parsed and checked only against THIRD_PARTY, the
  apiVersion/kind pairs of the pinned releases, plus the references between them (a LocalQueue's
  ClusterQueue, a flavor, the example's queue, priority classes and Secret). Their schemas are not checked:
  their CRDs come from the release manifests run.sh downloads, which a dry run does not fetch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_EXAMPLE = REPO / "examples" / "02-qlora-kueue" / "finetunejob.yaml"
CHART = REPO / "charts" / "kubetune"
RELEASE = "kubetune"
RELEASE_NAMESPACE = "kubetune-system"

# File names in apply order; run.sh applies each at its step.
KIND_CONFIG = "00-kind-cluster.yaml"
KWOK_NODES = "10-kwok-nodes.yaml"
QUEUES = "20-queues.yaml"
S3 = "30-s3.yaml"
SEED = "40-seed-data.yaml"
CHART_FILE = "50-chart.yaml"
EXAMPLE = "60-example.yaml"
STATIC = {KIND_CONFIG: "cluster.yaml", KWOK_NODES: "kwok-nodes.yaml", QUEUES: "queues.yaml", S3: "s3.yaml"}

# The pinned releases' kinds (run.sh: KUEUE_VERSION, KWOK_VERSION, kind's config API).
THIRD_PARTY = {
    ("kind.x-k8s.io/v1alpha4", "Cluster"),
    ("kueue.x-k8s.io/v1beta2", "ResourceFlavor"),
    ("kueue.x-k8s.io/v1beta2", "ClusterQueue"),
    ("kueue.x-k8s.io/v1beta2", "LocalQueue"),
    ("kueue.x-k8s.io/v1beta2", "WorkloadPriorityClass"),
    ("kwok.x-k8s.io/v1alpha1", "Stage"),
}
THIRD_PARTY_GROUPS = {api.split("/")[0] for api, _ in THIRD_PARTY}
NAMESPACED_THIRD_PARTY = {"LocalQueue"}
KUBETUNE_GROUP = "kubetune.dev"
TRAINER_IMAGE = "kubetune/trainer:e2e"

Manifest = dict[str, Any]


class InvalidManifestError(Exception):
    """A document that would not be applied as written; the message names the file and the object."""


# -- write ----------------------------------------------------------------------------------------------


def dataset_rows(count: int = 300) -> list[Manifest]:
    """Distinct OpenAI-format support chats, enough rows that validation passes without its small-data warning."""
    products = ["router", "laptop", "phone", "printer", "camera", "headset"]
    problems = [
        "does not turn on",
        "keeps restarting",
        "is very slow",
        "shows an error code",
        "will not pair",
    ]
    rows = []
    for i in range(count):
        product, problem = products[i % len(products)], problems[(i // len(products)) % len(problems)]
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You are a concise support assistant."},
                    {"role": "user", "content": f"Ticket {i}: my {product} {problem}. What should I do?"},
                    {
                        "role": "assistant",
                        "content": (
                            f"For ticket {i}: unplug the {product} for 30 seconds, update it, and if it still "
                            f"{problem}, reply with its serial number."
                        ),
                    },
                ]
            }
        )
    return rows


SEED_SCRIPT = """\
import sys
import boto3

dataset_file, dataset_uri, *buckets = sys.argv[1:]
s3 = boto3.client("s3")
for bucket in buckets:
    s3.create_bucket(Bucket=bucket)
bucket, _, key = dataset_uri.removeprefix("s3://").partition("/")
s3.upload_file(dataset_file, bucket, key)
print(f"created buckets {buckets}; uploaded {dataset_uri}")
"""


def _bucket(uri: str) -> str:
    return uri.removeprefix("s3://").partition("/")[0]


def seed_manifests(example: Manifest) -> list[Manifest]:
    """A ConfigMap holding the dataset and a Job (the trainer image: boto3 is in it) that creates the example's
    buckets in the S3 stand-in and uploads the dataset where spec.dataset.uri points."""
    spec = example["spec"]
    namespace = example["metadata"]["namespace"]
    dataset_uri = spec["dataset"]["uri"]
    buckets = sorted({_bucket(dataset_uri), _bucket(spec["output"]["uri"])})
    secret = spec["storageSecretRef"]["name"]
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in dataset_rows())
    restricted = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "e2e-dataset", "namespace": namespace},
        "data": {"dataset.jsonl": text},
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "e2e-seed-s3", "namespace": namespace},
        "spec": {
            "backoffLimit": 6,  # the S3 pod may still be starting: retry with the Job's back-off
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "runAsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "seed",
                            "image": TRAINER_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                "python",
                                "-c",
                                SEED_SCRIPT,
                                "/seed/dataset.jsonl",
                                dataset_uri,
                                *buckets,
                            ],
                            "envFrom": [{"secretRef": {"name": secret}}],
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "256Mi"},
                                "limits": {"memory": "1Gi"},
                            },
                            "securityContext": restricted,
                            "volumeMounts": [{"name": "dataset", "mountPath": "/seed", "readOnly": True}],
                        }
                    ],
                    "volumes": [{"name": "dataset", "configMap": {"name": "e2e-dataset"}}],
                }
            },
        },
    }
    return [config_map, job]


def write(out: Path, example_path: Path, extras: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for target, source in STATIC.items():
        shutil.copyfile(HERE / source, out / target)
    shutil.copyfile(example_path, out / EXAMPLE)
    example = next(_documents(out / EXAMPLE), None)
    if not isinstance(example, dict) or not isinstance(example.get("spec"), dict):
        raise InvalidManifestError(f"{out / EXAMPLE}: not a FineTuneJob manifest")
    try:
        seed = seed_manifests(example)
    except (KeyError, TypeError) as missing:
        raise InvalidManifestError(
            f"{example_path}: the e2e seeds S3 from spec.dataset.uri, spec.output.uri and "
            f"spec.storageSecretRef.name; missing {missing}"
        ) from None
    (out / SEED).write_text(yaml.safe_dump_all(seed, sort_keys=False, width=1000))
    for index, extra in enumerate(extras):
        shutil.copyfile(extra, out / f"90-extra-{index}-{extra.name}")
    print(f"wrote the e2e manifests to {out}")


def render_chart(out: Path, values_file: Path) -> None:
    """What `helm template` prints, through helm-python-sdk's embedded Helm (for machines without helm)."""
    import helm_python as helm

    values = yaml.safe_load(values_file.read_text()) or {}
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=RELEASE_NAMESPACE, is_install=True)
    parts = [
        f"# Source: {name}\n{text.strip()}\n"
        for name, text in sorted(rendered.items())
        if not name.endswith("NOTES.txt") and text.strip()
    ]
    (out / CHART_FILE).write_text("---\n".join(parts))
    print(f"rendered charts/kubetune into {out / CHART_FILE} (helm-python-sdk)")


# -- validate -------------------------------------------------------------------------------------------


def _documents(path: Path) -> Iterator[Any]:
    from kubetune.api.manifests import load_all_yaml  # kubectl's reading of `2e-4` (a number)

    try:
        yield from load_all_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise InvalidManifestError(f"{path.name}: not valid YAML: {error}") from None


def _describe(document: Manifest) -> str:
    metadata = document.get("metadata") or {}
    if not metadata and document.get("kind") == "Cluster":
        return f"Cluster ({document.get('apiVersion')}, the kind config)"
    where = f"{metadata['namespace']}/" if metadata.get("namespace") else ""
    return f"{document.get('kind', '?')} {where}{metadata.get('name', '?')}"


class Validator:
    def __init__(self, kube_version: str) -> None:
        from kubetune_sandbox.emulator.admission import CRDAdmission

        self.kube_version = kube_version
        self.admission = {}
        for crd_file in sorted((REPO / "crds").glob(f"*.{KUBETUNE_GROUP}.yaml")):
            crd = yaml.safe_load(crd_file.read_text())
            self.admission[crd["spec"]["names"]["kind"]] = (CRDAdmission(crd), crd["spec"]["versions"])
        self.seen: dict[tuple[str, str, str], Manifest] = {}  # (kind, namespace, name) -> object
        self.counts = {"built-in": 0, "custom": 0, "third-party": 0}

    def check(self, document: Any) -> str:
        if not isinstance(document, dict) or not document.get("apiVersion") or not document.get("kind"):
            raise InvalidManifestError("not a Kubernetes object (no apiVersion or kind)")
        api_version, kind = document["apiVersion"], document["kind"]
        group = api_version.split("/")[0] if "/" in api_version else ""
        if group == KUBETUNE_GROUP:
            self._custom(document, api_version.split("/")[1])
            category = "custom"
        elif group in THIRD_PARTY_GROUPS:
            if (api_version, kind) not in THIRD_PARTY:
                pinned = sorted(f"{a} {k}" for a, k in THIRD_PARTY if a.startswith(group + "/"))
                raise InvalidManifestError(
                    f"{api_version} {kind} is not a kind of the pinned release ({', '.join(pinned)})"
                )
            if kind != "Cluster" and not (document.get("metadata") or {}).get("name"):
                raise InvalidManifestError(f"{kind} has no metadata.name")
            if kind in NAMESPACED_THIRD_PARTY and not document["metadata"].get("namespace"):
                raise InvalidManifestError(f"{kind} {document['metadata']['name']} has no metadata.namespace")
            category = "third-party"
        else:
            self._built_in(document)
            category = "built-in"
        metadata = document.get("metadata") or {}
        self.seen[(kind, metadata.get("namespace", ""), metadata.get("name", ""))] = document
        self.counts[category] += 1
        return category

    def _built_in(self, document: Manifest) -> None:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(document, self.kube_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            raise InvalidManifestError(
                f"{document['apiVersion']} {document['kind']} is neither a built-in kind of Kubernetes "
                f"{self.kube_version} nor a pinned third-party kind"
            ) from None
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            raise InvalidManifestError(f"{path or '(top level)'}: {error.message}") from None

    def _custom(self, document: Manifest, version: str) -> None:
        from kubetune_sandbox.emulator.admission import AdmissionError

        entry = self.admission.get(document["kind"])
        if entry is None:
            raise InvalidManifestError(f"{document['apiVersion']} {document['kind']}: no such kind in crds/")
        admission, versions = entry
        if version not in {v["name"] for v in versions if v.get("served", True)}:
            raise InvalidManifestError(
                f"{document['apiVersion']}: crds/ serves no version {version} of {document['kind']}"
            )
        try:
            admission.admit(document, version=version)
        except AdmissionError as error:
            raise InvalidManifestError(str(error)) from None

    def cross_check(self) -> None:
        """References between the objects: what would otherwise fail only once the cluster runs them."""

        def need(kind: str, namespace: str, name: str, by: str) -> None:
            if (kind, namespace, name) not in self.seen:
                where = f" in namespace {namespace}" if namespace else ""
                raise InvalidManifestError(
                    f"{by} refers to {kind} {name}{where}, which no manifest here defines"
                )

        for (kind, namespace, name), document in sorted(self.seen.items()):
            spec = document.get("spec") or {}
            if kind == "LocalQueue":
                need("ClusterQueue", "", spec.get("clusterQueue", ""), f"LocalQueue {namespace}/{name}")
            elif kind == "ClusterQueue":
                for group in spec.get("resourceGroups") or []:
                    for flavor in group.get("flavors") or []:
                        need("ResourceFlavor", "", flavor.get("name", ""), f"ClusterQueue {name}")
            elif kind == "FineTuneJob":
                by = f"FineTuneJob {namespace}/{name}"
                scheduling = spec.get("scheduling") or {}
                if scheduling.get("queueName"):
                    need("LocalQueue", namespace, scheduling["queueName"], by + " spec.scheduling.queueName")
                if scheduling.get("priorityClassName"):
                    priority = scheduling["priorityClassName"]
                    need("PriorityClass", "", priority, by + " spec.scheduling.priorityClassName")
                    if scheduling.get("queueName"):
                        need("WorkloadPriorityClass", "", priority, by + " spec.scheduling.priorityClassName")
                if spec.get("storageSecretRef"):
                    need("Secret", namespace, spec["storageSecretRef"]["name"], by + " spec.storageSecretRef")
                need("Namespace", "", namespace, by)


def validate(out: Path, kube_version: str) -> None:
    files = sorted(path for path in out.glob("*.yaml"))
    if not files:
        raise InvalidManifestError(f"{out}: no manifests (run `write` first)")
    validator = Validator(kube_version)
    for path in files:
        for index, document in enumerate(_documents(path)):
            try:
                category = validator.check(document)
            except InvalidManifestError as error:
                what = _describe(document) if isinstance(document, dict) else "?"
                raise InvalidManifestError(f"{path.name}: document {index} ({what}): {error}") from None
            print(f"ok  {path.name}: {_describe(document)} ({category})")
    try:
        validator.cross_check()
    except InvalidManifestError as error:
        raise InvalidManifestError(f"{out}: {error}") from None
    counts = validator.counts
    print(
        f"valid: {counts['built-in']} built-in objects (kubernetes-validate {kube_version}, strict), "
        f"{counts['custom']} kubetune.dev objects (CRD admission), {counts['third-party']} third-party "
        "objects (apiVersion/kind of the pinned releases and their references only)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    write_command = commands.add_parser("write", help="write every manifest run.sh applies into --out")
    write_command.add_argument("--out", type=Path, required=True)
    write_command.add_argument("--example", type=Path, default=DEFAULT_EXAMPLE)
    write_command.add_argument("--extra", type=Path, action="append", default=[])
    render_command = commands.add_parser("render-chart", help="render the chart as `helm template` would")
    render_command.add_argument("--out", type=Path, required=True)
    render_command.add_argument("--values", type=Path, required=True)
    validate_command = commands.add_parser("validate", help="check every manifest in --out")
    validate_command.add_argument("--out", type=Path, required=True)
    validate_command.add_argument("--kube-version", required=True, help="e.g. 1.35 (as the kind node image)")
    args = parser.parse_args(argv)
    try:
        if args.command == "write":
            write(args.out, args.example, args.extra)
        elif args.command == "render-chart":
            render_chart(args.out, args.values)
        else:
            parts = str(args.kube_version).removeprefix("v").split(".")
            version = f"{parts[0]}.{parts[1] if len(parts) > 1 else 0}.0"
            validate(args.out, version)
    except InvalidManifestError as error:
        print(f"INVALID {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
