"""Child watches through the real operator: its Pod, Job and Deployment watches carry the label selector
(the API server filters, not the operator) in the watched namespace, and a child's change still reconciles
its parent at once. The resync timer is an hour here, so only a child event can explain a prompt reaction."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from kubetune.reconcile.watches import CHILD_WATCHES
from kubetune_sandbox.cluster import chart
from tests.api.conftest import load_example, with_changes
from tests.chart import chartkit
from tests.integration.harness import Api, OperatorProcess
from tests.integration.test_modeldeployment_operator import (
    HEALTHY,
    MD,
    _bench,
    _clean,
    _deployment,
    _finetunejob,
    _pass,
    _ready,
)
from tests.reconcile.world import VALIDATION_OK

PROMPT_SECONDS = 15.0  # an event's reconcile takes well under a second; an hour-long resync cannot help
CHILD_PATHS = {
    "/api/v1/namespaces/default/pods",
    "/apis/batch/v1/namespaces/default/jobs",
    "/apis/apps/v1/namespaces/default/deployments",
}


@pytest.fixture(scope="module")
def operator(emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    # The chart installed with watchNamespaces: [default]: its ServiceAccount and the Roles that mode renders.
    kubeconfig = tmp_path_factory.mktemp("kube") / "operator-kubeconfig"
    chart.operator_kubeconfig(emulator, kubeconfig, chartkit.manifests({"watchNamespaces": ["default"]}))
    env = {"KUBETUNE_RESYNC_SECONDS": "3600", "KUBETUNE_WATCH_NAMESPACES": "default"}
    process = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", env)
    process.start()
    yield process
    process.stop()


def _child_requests(emulator) -> list[tuple[str, dict[str, str]]]:
    return [
        (r.url.path, dict(r.params))
        for r in list(emulator.emulator)
        if r.method.value.upper() == "GET"
        and r.url.path.rstrip("/").endswith(("/pods", "/jobs", "/deployments"))
    ]


def test_a_finished_validation_job_starts_training_without_waiting_for_a_resync(api: Api, operator) -> None:
    name = "watched"
    api.create(with_changes(load_example("01-lora-basic/finetunejob.yaml"), {"metadata.name": name}))
    api.wait_job(f"{name}-validate")
    api.wait_phase(name, "Validating")
    started = time.monotonic()
    api.finish_job(f"{name}-validate", VALIDATION_OK)  # a Pod and a Job status change: child events
    api.wait_job(f"{name}-train", timeout=PROMPT_SECONDS)
    assert time.monotonic() - started < PROMPT_SECONDS


def test_a_ready_deployment_and_a_finished_benchmark_move_a_modeldeployment_without_a_resync(
    api: Api, operator
) -> None:
    _finetunejob(api, "served-job", passed=True)
    _pass(api, "served-job", perplexity="3.0")
    api.create(_clean(_deployment("served", "served-job")))
    _ready(api, "served", 1)  # the Deployment's status: the Deployment watch wakes the ModelDeployment
    api.wait_job("served-bench-r1", timeout=PROMPT_SECONDS)
    _bench(api, "served-bench-r1", HEALTHY)  # the benchmark Job finishing: the Job watch wakes it
    api.wait_phase("served", "Ready", kind=MD, timeout=PROMPT_SECONDS)


def test_every_child_list_and_watch_carries_the_label_selector_in_the_watched_namespace(
    emulator, operator
) -> None:
    requests = _child_requests(emulator)
    watches = [(path, params) for path, params in requests if params.get("watch") == "true"]
    selectors = {w.label_selector for w in CHILD_WATCHES}
    # Watches are opened once and stay open: all four (Jobs twice, for each parent kind) must be there.
    assert {(path, params["labelSelector"]) for path, params in watches} == {
        (
            {"Pod": "/api/v1/namespaces/default/pods", "Job": "/apis/batch/v1/namespaces/default/jobs",
             "Deployment": "/apis/apps/v1/namespaces/default/deployments"}[w.kind],
            w.label_selector,
        )
        for w in CHILD_WATCHES
    }  # fmt: skip
    for _, params in watches:
        assert params["resourceVersion"] and params["allowWatchBookmarks"] == "true", params
        assert int(params["timeoutSeconds"]) > 0
    # Nothing lists or watches children cluster-wide or without a selector (what Kopf's on.event did).
    assert {path for path, _ in requests} <= CHILD_PATHS
    unfiltered = [(p, q) for p, q in requests if not q.get("labelSelector")]
    assert unfiltered == []
    # The reconciles' own reads select one parent's children: a selector that names the parent.
    for _, params in requests:
        assert params["labelSelector"] in selectors or "=" in params["labelSelector"].split(",")[-1]
