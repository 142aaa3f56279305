"""The chart's RBAC is what the operator runs under: take one verb it needs out of the rendered ClusterRole and
the API refuses the operator's request with kube-apiserver's 403, which the job's status (or its lack of
one) shows."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chart import chartkit
from tests.integration.harness import Api, OperatorProcess
from tests.integration.test_finetunejob_operator import _job

REFUSALS_EXPECTED = True  # conftest's no_request_is_refused stands aside: these tests refuse on purpose
OPERATOR = "system:serviceaccount:kubetune-system:kubetune"


def without_verb(
    documents: list[chartkit.Manifest], group: str, resource: str, verb: str
) -> list[chartkit.Manifest]:
    """The rendered chart with `verb` on `resource` taken out of every Role and ClusterRole (other resources
    sharing a rule keep it)."""
    documents = copy.deepcopy(documents)
    removed = 0
    for document in documents:
        if document["kind"] not in ("Role", "ClusterRole"):
            continue
        rules: list[dict[str, Any]] = []
        for rule in document.get("rules") or []:
            if (
                group in rule.get("apiGroups", [])
                and resource in rule.get("resources", [])
                and verb in rule["verbs"]
            ):
                others = [r for r in rule["resources"] if r != resource]
                if others:
                    rules.append({**rule, "resources": others})
                rules.append(
                    {**rule, "resources": [resource], "verbs": [v for v in rule["verbs"] if v != verb]}
                )
                removed += 1
            else:
                rules.append(rule)
        document["rules"] = rules
    assert removed, f"the chart grants no {verb} on {group}/{resource}: nothing to take away"
    return documents


@pytest.fixture
def emulator() -> Iterator[Any]:
    from kubetune.api.crd import all_crds
    from kubetune_sandbox.emulator.server import EmulatorServer

    with EmulatorServer(
        crds=all_crds(), namespaces=("default", chartkit.NAMESPACE), authorization=True
    ) as server:
        yield server


@pytest.fixture
def start_operator(emulator, tmp_path: Path) -> Iterator[Any]:
    from kubetune_sandbox.cluster import chart

    processes: list[OperatorProcess] = []

    def start(documents: list[chartkit.Manifest]) -> OperatorProcess:
        kubeconfig = chart.operator_kubeconfig(emulator, tmp_path / "operator-kubeconfig", documents)
        process = OperatorProcess(kubeconfig, tmp_path / "operator.log")
        process.start()
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()


def test_without_create_on_jobs_the_job_is_refused_and_its_status_names_the_verb(
    api: Api, emulator, start_operator
) -> None:
    start_operator(without_verb(chartkit.manifests({}), "batch", "jobs", "create"))
    api.create(_job("no-jobs"))
    reconciled = api.wait_for(
        "an error condition", lambda: api.condition("no-jobs", "Reconciled") or None, timeout=30
    )
    expected = (
        f'jobs.batch is forbidden: User "{OPERATOR}" cannot create resource "jobs" in API group "batch"'
        ' in the namespace "default"'
    )
    assert reconciled["status"] == "False" and expected in reconciled["message"]
    assert api.get("Job", "no-jobs-validate") is None
    assert expected in emulator.authorization.denied_messages(OPERATOR)


def test_without_patch_on_the_status_the_job_never_gets_one(api: Api, emulator, start_operator) -> None:
    start_operator(without_verb(chartkit.manifests({}), "kubetune.dev", "finetunejobs/status", "patch"))
    api.create(_job("no-status"))
    expected = (
        f'finetunejobs.kubetune.dev "no-status" is forbidden: User "{OPERATOR}" cannot patch resource'
        ' "finetunejobs/status" in API group "kubetune.dev" in the namespace "default"'
    )
    api.wait_for(
        "the status patch to be refused", lambda: expected in emulator.authorization.denied_messages()
    )
    assert api.status("no-status") == {}  # not even the error condition could be written


def test_with_the_charts_rbac_intact_nothing_is_refused(api: Api, emulator, start_operator) -> None:
    """The control: the same operator, the chart as rendered; it creates the validation Job."""
    start_operator(chartkit.manifests({}))
    api.create(_job("allowed"))
    api.wait_job("allowed-validate")
    assert emulator.authorization.denied == []
    assert emulator.authorization.allowed[OPERATOR] > 0
