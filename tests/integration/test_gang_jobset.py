"""The real operator against an API emulator that serves JobSets: a multi-node job becomes one JobSet (found
by discovery), whose restarts and completion the operator follows. The test plays JobSet's controller."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from kubetune.reconcile import conditions as c
from kubetune.reconcile.observed import COMPLETION_INDEX
from kubetune.render.finetunejob import JOBSET_NAME_LABEL, JOBSET_RESTART_ATTEMPT_LABEL
from tests.api.conftest import load_example, with_changes
from tests.integration.harness import Api
from tests.reconcile.world import TRAINING_OK, VALIDATION_OK

EXAMPLE = load_example("01-lora-basic/finetunejob.yaml")
JOBSETS = "/apis/jobset.x-k8s.io/v1alpha2/namespaces/default/jobsets"

SPEC = with_changes(EXAMPLE, {"spec.resources": {"gpus": 1, "nodes": 2}})["spec"]


def _schema_of(value: Any) -> dict[str, Any]:
    """A structural schema admitting exactly the fields of `value` (the emulator prunes undeclared ones)."""
    if isinstance(value, dict):
        return {"type": "object", "properties": {k: _schema_of(v) for k, v in value.items()}}
    if isinstance(value, list):
        items: dict[str, Any] = {"type": "string"}
        for item in value:
            items = _merged(_schema_of(item), items) if items.get("type") == "object" else _schema_of(item)
        return {"type": "array", "items": items}
    return {"type": {bool: "boolean", int: "integer", float: "number"}.get(type(value), "string")}


def _merged(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    if a.get("type") != "object" or b.get("type") != "object":
        return a
    properties = dict(b["properties"])
    for key, schema in a["properties"].items():
        properties[key] = _merged(schema, properties[key]) if key in properties else schema
    return {"type": "object", "properties": properties}


def _jobset_crd() -> dict[str, Any]:
    """A stand-in for JobSet's CRD: its group, version, kind and status subresource, with a schema made from
    the JobSet the operator renders for SPEC and JobSet's status fields. JobSet's own validation is not under
    test here (tests/render checks the manifest against the shape of its CRD)."""
    from kubetune.api.common import ResourceIdentity
    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune.render import finetunejob as render
    from kubetune.render.pod import OperatorDefaults

    owner = ResourceIdentity(name="x", namespace="default", uid="u")
    jobset = render.training_jobset(owner, FineTuneJobSpec.model_validate(SPEC), OperatorDefaults(), "d")
    condition = {
        "type": "Completed",
        "status": "True",
        "reason": "R",
        "message": "m",
        "lastTransitionTime": "t",
    }
    status = {"restarts": 0, "restartsCountTowardsMax": 0, "terminalState": "Completed", "conditions": [condition],
              "replicatedJobsStatus": [{"name": "node", "active": 0, "failed": 0, "ready": 0, "succeeded": 0,
                                        "suspended": 0}]}  # fmt: skip
    schema = {
        "type": "object",
        "properties": {"spec": _schema_of(jobset["spec"]), "status": _schema_of(status)},
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "jobsets.jobset.x-k8s.io"},
        "spec": {
            "group": "jobset.x-k8s.io",
            "names": {"kind": "JobSet", "listKind": "JobSetList", "plural": "jobsets", "singular": "jobset"},
            "scope": "Namespaced",
            "versions": [{"name": "v1alpha2", "served": True, "storage": True, "subresources": {"status": {}},
                          "schema": {"openAPIV3Schema": schema}}],
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def emulator() -> Iterator[Any]:
    from kubetune.api.crd import all_crds
    from kubetune_sandbox.emulator.server import EmulatorServer

    with EmulatorServer(crds=[*all_crds(), _jobset_crd()]) as server:
        yield server


def _jobset(api: Api, name: str) -> dict[str, Any] | None:
    response = api.http.get(f"{api.url}{JOBSETS}/{name}", timeout=10)
    return None if response.status_code == 404 else response.json()


def _jobset_status(api: Api, name: str, status: dict[str, Any]) -> None:
    response = api.http.patch(f"{api.url}{JOBSETS}/{name}/status", json={"status": status},
                              headers={"Content-Type": "application/merge-patch+json"}, timeout=10)  # fmt: skip
    response.raise_for_status()


def _pod(
    api: Api, jobset: dict[str, Any], index: int, attempt: int, phase: str, *, message: str | None = None
) -> None:
    """A pod of the JobSet's child Job as JobSet's and the Job controller would make it."""
    name = f"{jobset['metadata']['name']}-node-0-{index}-a{attempt}"
    template = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    if api.get("Pod", name) is None:
        labels = {**template["metadata"]["labels"], JOBSET_NAME_LABEL: jobset["metadata"]["name"],
                  JOBSET_RESTART_ATTEMPT_LABEL: str(attempt),
                  "batch.kubernetes.io/job-name": f"{jobset['metadata']['name']}-node-0"}  # fmt: skip
        api.create({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "labels": labels, "annotations": {COMPLETION_INDEX: str(index)}},
                    "spec": template["spec"]})  # fmt: skip
    status: dict[str, Any] = {"phase": phase, "podIP": "127.0.0.1"}
    if message is not None:
        terminated = {"exitCode": 0, "reason": "Completed", "message": message}
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}, "ready": False,
                                        "restartCount": 0, "image": "trainer", "imageID": ""}]  # fmt: skip
    api.patch("Pod", name, {"status": status}, sub="status")


def test_a_multinode_job_runs_as_one_jobset_whose_restarts_the_operator_follows(api: Api, operator) -> None:
    name = "gang-set"
    api.create(with_changes(EXAMPLE, {"metadata.name": name, "spec": SPEC}))
    api.wait_job(f"{name}-validate")
    api.finish_job(f"{name}-validate", VALIDATION_OK)
    jobset = api.wait_for("the training JobSet", lambda: _jobset(api, name))
    assert jobset["spec"]["failurePolicy"]["maxRestarts"] == 3
    assert jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["completions"] == 2
    # JobSet makes the Service and the Jobs: the operator created neither.
    assert api.get("Job", f"{name}-train") is None and api.get("Service", f"{name}-train") is None

    for index in (0, 1):
        _pod(api, jobset, index, 0, "Running")
    api.wait_for("running", lambda: api.condition(name, c.RUNNING).get("status") == "True")

    # JobSet recreated every rank once (rank 1 failed): the operator reports and counts it.
    _jobset_status(api, name, {"restarts": 1, "restartsCountTowardsMax": 1})
    for index in (0, 1):
        _pod(api, jobset, index, 1, "Running")
    api.wait_for("restart counted", lambda: api.status(name).get("restarts") == 1)
    api.wait_for("GangRestarted event", lambda: c.GANG_RESTARTED in api.events(name))

    for index in (0, 1):
        _pod(api, jobset, index, 1, "Succeeded", message=json.dumps(TRAINING_OK))
    _jobset_status(api, name, {
        "restarts": 1, "restartsCountTowardsMax": 1, "terminalState": "Completed",
        "conditions": [{"type": "Completed", "status": "True", "reason": "AllJobsCompleted", "message": "done",
                        "lastTransitionTime": "2026-11-29T11:00:00Z"}],
    })  # fmt: skip
    api.wait_job(f"{name}-finish")
    status = api.wait_phase(name, "Evaluating")
    assert status["restarts"] == 1
    assert status["progress"]["step"] == TRAINING_OK["progress"]["step"]
