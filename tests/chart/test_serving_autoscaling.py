"""Autoscaling of ModelDeployments as the chart ships it: the Prometheus Adapter rules (opt-in) give the HPA the
metric name it asks for, the KEDA query uses the label the serving PodMonitor writes, and the Prometheus URL
is a Helm value that reaches the operator's settings."""

from __future__ import annotations

import re

import kubernetes_validate
import yaml

from kubetune.api.common import ResourceIdentity
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.handlers.settings import OperatorConfig
from kubetune.render import modeldeployment as render
from tests.api.conftest import load_example
from tests.chart.chartkit import env_of, manifests, of_kind, one

OWNER = ResourceIdentity(name="support-bot", namespace="team-a", uid="u")
ADAPTER_ON = {"prometheusAdapter": {"rules": {"enabled": True}}}


def _adapter_rules(values: dict) -> list[dict]:
    (config,) = found = [
        doc
        for doc in of_kind(manifests(values), "ConfigMap")
        if doc["metadata"]["name"].endswith("-prometheus-adapter")
    ]
    for document in found:
        kubernetes_validate.validate(document, "1.37.0", strict=True)
    return yaml.safe_load(config["data"]["config.yaml"])["rules"]


def _adapter_name(rules: list[dict], series: str) -> str | None:
    """What Prometheus Adapter calls a series: the first rule whose query and filters admit it, renamed."""
    for rule in rules:
        selector = re.search(r'__name__=~"([^"]+)"', rule["seriesQuery"]).group(1)
        if not re.fullmatch(selector, series):
            continue
        if any(re.search(f["isNot"], series) for f in rule.get("seriesFilters", [])):
            continue
        matches, template = rule["name"]["matches"], rule["name"]["as"]
        return re.sub(matches, template.replace("${1}", r"\1"), series)
    return None


def test_prometheus_adapter_rules_are_opt_in() -> None:
    assert not [
        d for d in of_kind(manifests({}), "ConfigMap") if "prometheus-adapter" in d["metadata"]["name"]
    ]


def test_prometheus_adapter_rules_name_the_metric_the_hpa_reads() -> None:
    rules = _adapter_rules(ADAPTER_ON)
    spec = ModelDeploymentSpec.model_validate(load_example("05-serve-canary/modeldeployment.yaml")["spec"])
    hpa = render.horizontal_pod_autoscaler(OWNER, spec, 1)
    wanted = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert _adapter_name(rules, spec.autoscaling.metric) == wanted == "vllm_num_requests_waiting"
    assert _adapter_name(rules, "tgi_queue_size") == "tgi_queue_size"
    assert _adapter_name(rules, "vllm:request_success_total") is None  # counters need a rate: not exposed
    for rule in rules:  # only series the serving PodMonitor labelled, per pod and namespace
        assert f"{render.PROMETHEUS_DEPLOYMENT_LABEL}!=" in rule["seriesQuery"]
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_the_keda_query_uses_the_labels_the_serving_pod_monitor_writes() -> None:
    monitors = of_kind(manifests({"metrics": {"podMonitor": {"serving": {"enabled": True}}}}), "PodMonitor")
    (serving,) = [m for m in monitors if m["metadata"]["name"].endswith("-serving")]
    written = {r["targetLabel"] for r in serving["spec"]["podMetricsEndpoints"][0]["relabelings"]}
    spec = ModelDeploymentSpec.model_validate(load_example("05-serve-canary/modeldeployment.yaml")["spec"])
    query = render.keda_scaled_object(OWNER, spec, 3, render.PROMETHEUS_URL)["spec"]["triggers"][0][
        "metadata"
    ]
    used = set(re.findall(r'([a-z_]+)="', query["query"])) - {"namespace"}  # namespace: set by the PodMonitor
    assert used <= written, f"the KEDA query filters on labels no PodMonitor writes: {used - written}"


def test_prometheus_url_is_a_helm_value_the_operator_reads() -> None:
    url = "http://thanos-query.observability.svc:9090"
    container = one(manifests({"keda": {"enabled": True, "prometheusUrl": url}}), "Deployment")["spec"][
        "template"
    ]["spec"]["containers"][0]
    assert OperatorConfig.from_env(env_of(container)).prometheus_url == url
