"""Rendering the chart offline with helm-python-sdk (Helm 4 embedded) and picking the result apart."""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
RELEASE = "kubetune"
NAMESPACE = "kubetune-system"
KUBE_VERSIONS = ("1.28.0", "1.37.0")

Manifest = dict[str, Any]

MONITORING_ON: dict[str, Any] = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "podMonitor": {"trainer": {"enabled": True}, "serving": {"enabled": True}},
        "prometheusRule": {"enabled": True, "alertLabels": {"team": "ml-platform"}},
        "dashboard": {"enabled": True, "namespace": "monitoring"},
    },
    "keda": {"enabled": True},
    "gatewayAPI": {"enabled": True},
}

# Named value sets every chart test runs over: the defaults and one per way platform teams install it.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"], **copy.deepcopy(MONITORING_ON)},
    "monitoring": copy.deepcopy(MONITORING_ON),
    "crds-off": {"crds": {"install": False}},
    "crds-not-kept": {
        "crds": {"keep": False, "annotations": {"argocd.argoproj.io/sync-options": "Prune=false"}}
    },
    "custom-images": {
        "image": {
            "registry": "registry.example.com:5000",
            "repository": "platform/kubetune-operator",
            "tag": "0.1.0-rc1",
            "digest": "sha256:" + "a" * 64,
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "defaults": {
            "trainer": {
                "image": {
                    "registry": "registry.example.com:5000",
                    "repository": "platform/trainer",
                    "tag": "cu13",
                    "digest": "",
                },
                "serviceAccountName": "trainer",
            },
            "vllm": {
                "image": {"registry": "", "repository": "vllm/vllm-openai", "tag": "v0.12.0", "digest": ""}
            },
            "tgi": {
                "image": {
                    "registry": "mirror.example.com",
                    "repository": "hf/tgi",
                    "tag": "3.3.6",
                    "digest": "sha256:" + "b" * 64,
                }
            },
            "imagePullPolicy": "Always",
            "gpuTolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {
                    "key": "cloud.example.com/gpu-pool",
                    "operator": "Equal",
                    "value": "h100",
                    "effect": "NoSchedule",
                },
            ],
        },
        "operator": {
            "jsonLogs": False,
            "verbose": True,
            "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        },
        "priorityClassName": "system-cluster-critical",
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}
        ],
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
            ],
            "apiServerCIDRs": ["10.0.0.1/32"],
        },
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "node-role.kubernetes.io/platform", "operator": "Exists"}
                            ]
                        }
                    ]
                }
            }
        },
    },
    "existing-service-account": {
        "serviceAccount": {"create": False, "name": "kubetune-operator"},
        "rbac": {"create": False, "aggregateClusterRoles": False},
        "fullnameOverride": "ml-operator",
    },
}


@cache
def _render(values_json: str, name: str, namespace: str) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(json.loads(values_json), name=name, namespace=namespace, is_install=True)


def render(
    values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would print it (NOTES.txt included)."""
    return dict(_render(json.dumps(values or {}, sort_keys=True), name, namespace))


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def _manifests(values_json: str, name: str, namespace: str) -> tuple[Manifest, ...]:
    documents: list[Manifest] = []
    for template, text in sorted(_render(values_json, name, namespace).items()):
        if template.endswith("NOTES.txt"):
            continue
        documents.extend(doc for doc in yaml.load_all(text, Loader=_Loader) if doc)
    return tuple(documents)


def manifests(
    values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> list[Manifest]:
    """Every rendered Kubernetes object, in template order (a fresh copy: callers may change it)."""
    return copy.deepcopy(list(_manifests(json.dumps(values or {}, sort_keys=True), name, namespace)))


def of_kind(documents: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in documents if doc["kind"] == kind]


def one(documents: list[Manifest], kind: str) -> Manifest:
    found = of_kind(documents, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


POD_NAME = "kubetune-5d8f-abcde"


def env_of(container: Manifest) -> dict[str, str]:
    """The container's environment as the kubelet fills it in (downward API fields included)."""
    fields = {"metadata.namespace": NAMESPACE, "metadata.name": POD_NAME}
    return {
        item["name"]: fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        if "valueFrom" in item
        else item.get("value", "")
        for item in container.get("env") or []
    }


def prometheus_rules(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The rendered PrometheusRule's spec as a Prometheus rule file ({"groups": [...]})."""
    rule = one(manifests(values), "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


# -- PromQL ---------------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_LABELS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless",
    "inf", "nan", "atan2",
}  # fmt: skip
_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "count", "count_over_time", "count_values", "delta", "deriv", "exp", "floor", "group",
    "histogram_quantile", "holt_winters", "idelta", "increase", "irate", "label_join", "label_replace", "ln",
    "last_over_time", "max", "max_over_time", "min", "min_over_time", "quantile", "quantile_over_time", "rate",
    "resets", "round", "scalar", "sort", "sort_desc", "sqrt", "stddev", "stddev_over_time", "sum",
    "sum_over_time", "time", "timestamp", "topk", "bottomk", "vector", "predict_linear", "present_over_time",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (labels, strings, ranges and grouping clauses removed)."""
    text = _STRING.sub('""', expr)
    text = _LABELS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        word = match.group(0)
        before = text[: match.start()].rstrip()
        after = text[match.end() :].lstrip()
        if word.lower() in _KEYWORDS or after.startswith("("):
            continue
        if before.endswith(("$", "{")) or (match.start() and text[match.start() - 1].isdigit()):
            continue
        names.add(word)
    names -= _FUNCTIONS
    return names


def grafana_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query in a Grafana dashboard, rows included."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    found.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels") or [])

    walk(dashboard.get("panels") or [])
    return found


def concrete(expr: str) -> str:
    """A Grafana expression with its template variables replaced, so that Prometheus can parse it."""
    return (
        expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace('"$namespace"', '".*"')
    )
