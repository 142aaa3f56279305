"""Alerts, recording rules and the dashboard against real Prometheus tools: promtool checks and unit-tests the
rendered rules, and a real Prometheus scrapes the real operator (running against the API emulator)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from kubetune.api.manifests import load_yaml
from tests.chart.chartkit import (
    CHART,
    MONITORING_ON,
    NAMESPACE,
    REPO,
    concrete,
    grafana_exprs,
    manifests,
    metric_names,
    one,
    prometheus_rules,
)

HERE = Path(__file__).resolve().parent
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


@pytest.fixture(autouse=True, scope="module")
def _monitoring_tools_present() -> None:
    """CI installs them (scripts/system-packages.sh): a missing tool is a failure, never a silent skip."""
    missing = [name for name, path in (("promtool", PROMTOOL), ("prometheus", PROMETHEUS)) if path is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run scripts/system-packages.sh (as root)")


# The values alerts-test.yaml was written for (alert thresholds at their defaults).
RULE_VALUES: dict[str, Any] = {
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
}
ALERTS = {
    "KubetuneFineTuneJobFailed", "KubetuneFineTuneJobStuck", "KubetuneEvaluationGateFailed",
    "KubetuneCheckpointStale", "KubetuneModelDeploymentRolledBack", "KubetuneServingErrorRateHigh",
    "KubetuneServingLatencyHigh", "KubetuneReconcileErrors", "KubetuneOperatorDown",
}  # fmt: skip

# Serving metrics of the runtimes kubetune deploys, as their documentation lists them:
# vLLM: https://docs.vllm.ai/en/stable/usage/metrics/ (plus http_* from prometheus-fastapi-instrumentator),
# TGI: https://huggingface.co/docs/text-generation-inference/reference/metrics.
VLLM_METRICS = {
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
    "vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
    "vllm:request_queue_time_seconds", "http_requests_total", "http_request_duration_seconds",
}  # fmt: skip
TGI_METRICS = {
    "tgi_request_count", "tgi_request_success", "tgi_request_failure", "tgi_request_duration", "tgi_queue_size",
    "tgi_batch_current_size", "tgi_request_generated_tokens", "tgi_request_input_length",
}  # fmt: skip
HISTOGRAMS = {"vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
              "vllm:request_queue_time_seconds", "http_request_duration_seconds", "tgi_request_duration"}  # fmt: skip
# Labels an aggregation may keep: none of them grows with the number of jobs or requests served over time.
BOUNDED_LABELS = {
    "namespace",
    "kind",
    "reason",
    "result",
    "phase",
    "le",
    "modeldeployment",
    "revision",
    "finetunejob",
}


def _expand(names: set[str], histograms: set[str]) -> set[str]:
    out = set(names)
    for name in histograms:
        out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return out


def known_metrics() -> set[str]:
    """Every series name the rules and the dashboard may select."""
    from prometheus_client.metrics_core import Metric

    from kubetune.adapters.metrics import REGISTRY
    from kubetune.reconcile.progress import TRAINER_METRICS

    operator: set[str] = set()
    for collector in list(REGISTRY._collector_to_names):  # the registry keeps no public list
        for family in collector.describe():
            assert isinstance(family, Metric)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
            operator |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    recorded = {
        rule["record"]
        for group in prometheus_rules(RULE_VALUES)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    return (
        operator | set(TRAINER_METRICS) | _expand(VLLM_METRICS | TGI_METRICS, HISTOGRAMS) | recorded | {"up"}
    )


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _write_rules(directory: Path, values: dict[str, Any]) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(prometheus_rules(values), sort_keys=False))
    return path


# -- promtool ----------------------------------------------------------------------------------------------


def test_promtool_check_rules_accepts_the_rendered_rules(tmp_path: Path) -> None:
    _write_rules(tmp_path, MONITORING_ON)
    result = _promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass_for_every_alert(tmp_path: Path) -> None:
    _write_rules(tmp_path, RULE_VALUES)
    shutil.copy(HERE / "alerts-test.yaml", tmp_path / "alerts-test.yaml")
    result = _promtool("test", "rules", "alerts-test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fail_when_an_alert_is_missing(tmp_path: Path) -> None:
    values = json.loads(json.dumps(RULE_VALUES))
    values["metrics"]["prometheusRule"]["disabledAlerts"] = ["KubetuneCheckpointStale"]
    _write_rules(tmp_path, values)
    shutil.copy(HERE / "alerts-test.yaml", tmp_path / "alerts-test.yaml")
    result = _promtool("test", "rules", "alerts-test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "KubetuneCheckpointStale" in result.stdout + result.stderr


def test_every_alert_has_unit_tests_and_nothing_else_is_tested() -> None:
    rendered = {
        rule["alert"]
        for group in prometheus_rules(RULE_VALUES)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert rendered == ALERTS
    tests = yaml.safe_load((HERE / "alerts-test.yaml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test") or []}
    firing = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test") or []
        if case["exp_alerts"]
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test") or []
        if not case["exp_alerts"]
    }
    assert tested == firing == quiet == ALERTS


def test_disabled_alerts_and_empty_phases_are_left_out() -> None:
    values = json.loads(json.dumps(RULE_VALUES))
    values["metrics"]["prometheusRule"]["disabledAlerts"] = ["KubetuneOperatorDown"]
    values["metrics"]["prometheusRule"]["stuckPhases"] = {"Queued": ""}
    rules = [r for g in prometheus_rules(values)["groups"] for r in g["rules"] if "alert" in r]
    assert "KubetuneOperatorDown" not in {r["alert"] for r in rules}
    assert {r["labels"]["phase"] for r in rules if r["alert"] == "KubetuneFineTuneJobStuck"} == {
        "Pending",
        "Validating",
        "Evaluating",
    }


def test_rules_reference_only_existing_metrics_and_keep_labels_bounded() -> None:
    known = known_metrics()
    for group in prometheus_rules(MONITORING_ON)["groups"]:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - known
            assert unknown == set(), (rule.get("record") or rule.get("alert"), unknown)
            for clause in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"]):
                labels = {label.strip() for label in clause.split(",") if label.strip()}
                assert labels <= BOUNDED_LABELS, (rule.get("record") or rule.get("alert"), labels)
            if "record" in rule:
                assert re.fullmatch(r"[a-z_]+:kubetune_[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_the_metric_check_can_fail() -> None:
    assert metric_names('sum by (phase) (rate(kubetune_finetunejob_total{phase="x"}[5m]))') == {
        "kubetune_finetunejob_total"
    }
    assert "kubetune_finetunejob_total" not in known_metrics()


# -- dashboard ---------------------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads((CHART / "files" / "dashboards" / "kubetune.json").read_text())


def test_dashboard_has_the_panels_platform_teams_look_for() -> None:
    dashboard = _dashboard()
    titles = {title for title, _ in grafana_exprs(dashboard)}
    for wanted in ("FineTuneJobs by phase", "Training loss (running jobs)", "Tokens per second (running jobs)",
                   "Queue wait", "GPUs requested by running jobs", "Request latency", "Error rate"):  # fmt: skip
        assert wanted in titles
    assert dashboard["uid"] == "kubetune-overview"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace"}
    rendered = one(manifests(MONITORING_ON), "ConfigMap")
    assert json.loads(rendered["data"]["kubetune.json"]) == dashboard


def test_dashboard_queries_use_only_existing_metrics() -> None:
    known = known_metrics()
    for title, expr in grafana_exprs(_dashboard()):
        unknown = metric_names(concrete(expr)) - known
        assert unknown == set(), (title, unknown)


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool has no parser for bare expressions: each query becomes a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}:check", "expr": concrete(expr)}
        for i, (_, expr) in enumerate(grafana_exprs(_dashboard()))
    ]
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    result = _promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "broken.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "a:b:c", "expr": "sum by (le (x)"}]}]})
    )
    assert _promtool("check", "rules", "broken.yaml", cwd=tmp_path).returncode != 0


# -- a real Prometheus scrapes the real operator ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def running_operator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Any]]:
    """`kubetune operator` against the API emulator, its metrics on a free port (as KUBETUNE_METRICS_PORT)."""
    from kubetune.api.crd import all_crds
    from kubetune_sandbox.emulator.server import EmulatorServer
    from tests.integration.harness import OperatorProcess

    directory = tmp_path_factory.mktemp("operator")
    port = _free_port()
    with EmulatorServer(crds=all_crds()) as server:
        process = OperatorProcess(
            server.kubeconfig(directory / "kubeconfig"),
            directory / "operator.log",
            env={"KUBETUNE_METRICS_PORT": str(port), "KUBETUNE_RESYNC_SECONDS": "1"},
        )
        process.start()
        try:
            yield port, server
        finally:
            process.stop()


@pytest.fixture(scope="module")
def prometheus(running_operator: tuple[int, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus in its own directory on a free port, scraping the operator like the chart's
    ServiceMonitor does (same path), with the chart's rules loaded; killed at the end."""
    assert PROMETHEUS is not None  # _monitoring_tools_present fails the module otherwise
    metrics_port, _ = running_operator
    directory = tmp_path_factory.mktemp("prometheus")
    endpoint = one(manifests(RULE_VALUES), "ServiceMonitor")["spec"]["endpoints"][0]
    _write_rules(directory, RULE_VALUES)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [{
            "job_name": "kubetune-metrics",
            "metrics_path": endpoint["path"],
            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"namespace": NAMESPACE}}],
        }],
    }  # fmt: skip
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        cwd=directory, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert process.poll() is None, (directory / "prometheus.log").read_text()
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)
        log.close()


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    response = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    response.raise_for_status()
    return list(response.json()["data"]["result"])


def _wait_for(url: str, promql: str, timeout: float = 25.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = _query(url, promql)
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"no result for {promql} within {timeout}s")


def test_prometheus_scrapes_the_running_operator(prometheus: str, running_operator: tuple[int, Any]) -> None:
    from tests.integration.harness import Api

    _, server = running_operator
    example = load_yaml((REPO / "examples" / "01-lora-basic" / "finetunejob.yaml").read_text())
    Api(server.url, namespace=example["metadata"]["namespace"]).create(example)
    phases = _wait_for(prometheus, "kubetune_finetunejobs")
    assert {series["metric"]["phase"] for series in phases} >= {"Pending", "Running", "Succeeded", "Failed"}
    assert all(series["metric"]["job"] == "kubetune-metrics" for series in phases)
    reconciles = _wait_for(prometheus, 'kubetune_reconcile_total{kind="FineTuneJob", result="ok"} > 0')
    assert float(reconciles[0]["value"][1]) >= 1
    up = _query(prometheus, 'up{job="kubetune-metrics"}')
    assert up and up[0]["value"][1] == "1"
    # The chart's rules load and evaluate in a real Prometheus.
    groups = requests.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert {g["name"] for g in groups} == {"kubetune.recording", "kubetune.alerts"}
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] in ("ok", "unknown"), rule
