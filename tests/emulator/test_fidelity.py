"""The API emulator behaves as kube-apiserver does wherever Kopf, kubectl or the Python client can tell."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import kopf
import kubernetes
import pytest
from kopf.testing import KopfRunner

from kubetune_sandbox.emulator.server import ApiEmulator, EmulatorServer

from .conftest import WIDGET_CRD, WIDGETS, Http, widget

T = TypeVar("T")
WIDGET_PATH = "/apis/example.com/v1/namespaces/default/widgets"
CONFIGMAPS = "v1/configmaps"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def wait_for(condition: Callable[[], T], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout} s")


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
    }


def configmap(name: str, owner: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, **metadata},
        "data": {"k": "v"},
    }


def names(items: list[dict[str, Any]]) -> set[str]:
    return {item["metadata"]["name"] for item in items}


def revision(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


# Creating, and what the server owns in metadata.


def test_python_client_create_returns_the_stored_object_with_server_metadata(k8s: Any) -> None:
    core = kubernetes.client.CoreV1Api(k8s)
    body = kubernetes.client.V1ConfigMap(
        metadata=kubernetes.client.V1ObjectMeta(name="settings"), data={"a": "1"}
    )
    created = core.create_namespaced_config_map("default", body)
    assert created.metadata.uid and created.metadata.creation_timestamp and created.metadata.resource_version
    assert created.metadata.namespace == "default"  # taken from the URL

    custom = kubernetes.client.CustomObjectsApi(k8s)
    obj = custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets", widget("w"))
    assert obj["metadata"]["generation"] == 1
    assert int(obj["metadata"]["resourceVersion"]) > int(created.metadata.resource_version)

    with pytest.raises(kubernetes.client.ApiException) as conflict:
        custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets", widget("w"))
    assert conflict.value.status == 409
    assert json.loads(conflict.value.body)["reason"] == "AlreadyExists"


def test_generate_name_appends_a_random_five_character_suffix(server: EmulatorServer, http: Http) -> None:
    event = {"metadata": {"generateName": "w."}, "reason": "Seen"}  # as Kopf posts its events
    generated = {server.create("v1/events", event, "default")["metadata"]["name"] for _ in range(3)}
    assert len(generated) == 3
    assert all(re.fullmatch(r"w\.[a-z0-9]{5}", name) for name in generated)
    nameless = http("POST", WIDGET_PATH, {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {}})
    assert nameless.status_code == 422


# Optimistic concurrency.


def test_a_stale_resource_version_conflicts_and_fails_a_json_patch_test(
    server: EmulatorServer, http: Http
) -> None:
    created = http("POST", WIDGET_PATH, widget("w")).json()
    stale = created["metadata"]["resourceVersion"]
    http("PATCH", f"{WIDGET_PATH}/w", {"spec": {"size": 2}}, content_type=MERGE)

    add_finalizer = {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/f"]}
    kopf_style = [{"op": "test", "path": "/metadata/resourceVersion", "value": stale}, add_finalizer]
    failed = http("PATCH", f"{WIDGET_PATH}/w", kopf_style, content_type=JSON_PATCH)
    assert failed.status_code == 422  # what Kopf expects in order to retry, not a 500
    assert "finalizers" not in server.get(WIDGETS, "default", "w")["metadata"]

    merge_with_stale = {"metadata": {"resourceVersion": stale}, "spec": {"size": 9}}
    assert http("PATCH", f"{WIDGET_PATH}/w", merge_with_stale, content_type=MERGE).status_code == 409

    current = server.get(WIDGETS, "default", "w")["metadata"]["resourceVersion"]
    kopf_style[0]["value"] = current
    patched = http("PATCH", f"{WIDGET_PATH}/w", kopf_style, content_type=JSON_PATCH)
    assert patched.status_code == 200
    assert patched.json()["metadata"]["finalizers"] == ["example.com/f"]


def test_generation_bumps_on_spec_changes_only(server: EmulatorServer) -> None:
    server.create(WIDGETS, widget("w"), "default")

    def generation() -> int:
        return int(server.get(WIDGETS, "default", "w")["metadata"]["generation"])

    metadata_only = {"labels": {"a": "b"}, "annotations": {"c": "d"}, "finalizers": ["example.com/f"]}
    server.patch(WIDGETS, "default", "w", {"metadata": metadata_only})
    assert generation() == 1
    server.patch(WIDGETS, "default", "w", {"status": {"phase": "Ready"}}, subresource="status")
    assert generation() == 1
    server.patch(WIDGETS, "default", "w", {"spec": {"size": 2}})
    assert generation() == 2
    server.patch(WIDGETS, "default", "w", {"spec": {"size": 2}})  # no change, no bump
    assert generation() == 2

    job = {
        "metadata": {"name": "train"},
        "spec": {"parallelism": 1, "template": {"spec": {"containers": []}}},
    }
    server.create("batch/v1/jobs", job, "default")
    server.patch("batch/v1/jobs", "default", "train", {"status": {"active": 1}}, subresource="status")
    server.patch("batch/v1/jobs", "default", "train", {"spec": {"suspend": True}})
    assert server.get("batch/v1/jobs", "default", "train")["metadata"]["generation"] == 2


def test_the_status_subresource_is_separate_from_the_main_resource(http: Http) -> None:
    created = http("POST", WIDGET_PATH, widget("w") | {"status": {"phase": "Forged"}}).json()
    assert "status" not in created  # controllers write status, through /status

    main = http(
        "PATCH", f"{WIDGET_PATH}/w", {"spec": {"size": 2}, "status": {"phase": "Ignored"}}, content_type=MERGE
    )
    assert main.json()["spec"] == {"size": 2}
    assert "status" not in main.json()

    status_write = {"spec": {"size": 99}, "metadata": {"labels": {"x": "y"}}, "status": {"phase": "Ready"}}
    status = http("PATCH", f"{WIDGET_PATH}/w/status", status_write, content_type=MERGE).json()
    assert status["status"] == {"phase": "Ready"}
    assert status["spec"] == {"size": 2}
    assert "labels" not in status["metadata"]
    assert revision(status) > revision(main.json())

    assert http("GET", f"{WIDGET_PATH}/w/status").json()["status"] == {"phase": "Ready"}


# Deletion: finalizers, owners, namespaces.


def test_finalizers_hold_deletion_until_the_last_one_is_removed(server: EmulatorServer, http: Http) -> None:
    finalizers = ["example.com/a", "example.com/b"]
    since = http("POST", WIDGET_PATH, widget("w", finalizers=finalizers)).json()["metadata"][
        "resourceVersion"
    ]

    deleting = http("DELETE", f"{WIDGET_PATH}/w")
    assert deleting.status_code == 200
    assert deleting.json()["metadata"]["deletionTimestamp"]
    assert http("DELETE", f"{WIDGET_PATH}/w").status_code == 200  # again: nothing changes
    more = {"metadata": {"finalizers": [*finalizers, "example.com/c"]}}
    assert (
        http("PATCH", f"{WIDGET_PATH}/w", more, content_type=MERGE).status_code == 422
    )  # none may be added now

    server.patch(WIDGETS, "default", "w", {"metadata": {"finalizers": ["example.com/b"]}})
    assert server.get(WIDGETS, "default", "w") is not None
    last = server.patch(WIDGETS, "default", "w", {"metadata": {"finalizers": []}})
    assert not last["metadata"].get("finalizers")
    assert server.get(WIDGETS, "default", "w") is None

    events = list(http.watch(WIDGET_PATH, resourceVersion=since, timeoutSeconds=1))
    assert [event["type"] for event in events] == ["MODIFIED", "MODIFIED", "DELETED"]


def test_deleting_an_owner_collects_its_dependents_recursively(server: EmulatorServer) -> None:
    owner = server.create(WIDGETS, widget("w"), "default")
    child = server.create(CONFIGMAPS, configmap("child", owner), "default")
    server.create(CONFIGMAPS, configmap("grandchild", child), "default")
    server.create(CONFIGMAPS, configmap("unrelated"), "default")

    server.delete(WIDGETS, "default", "w")
    assert names(server.list(CONFIGMAPS, "default")) == {"unrelated"}


def test_namespaces_are_listed_and_created_but_not_deleted(server: EmulatorServer, http: Http) -> None:
    created = http("POST", "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
    assert (created.status_code, created.json()["status"]["phase"]) == (201, "Active")
    listed = http("GET", "/api/v1/namespaces").json()
    assert listed["kind"] == "NamespaceList"
    assert names(listed["items"]) == {"default", "team-a"}
    assert http("POST", "/api/v1/namespaces/nowhere/configmaps", configmap("x")).status_code == 404
    assert (
        http("DELETE", "/api/v1/namespaces/team-a").status_code == 405
    )  # not served: nothing of ours does it


# Reading: selectors, lists, discovery.


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=web", {"a", "c"}),
        ("tier==web", {"a", "c"}),
        ("tier!=web", {"b", "d"}),
        ("env", {"a", "b"}),
        ("!env", {"c", "d"}),
        ("tier=web,env=prod", {"a"}),
        ("env,tier!=db", {"a"}),
    ],
)
def test_label_selectors_filter_lists(
    server: EmulatorServer, http: Http, selector: str, expected: set[str]
) -> None:
    labels = {
        "a": {"tier": "web", "env": "prod"},
        "b": {"tier": "db", "env": "prod"},
        "c": {"tier": "web"},
        "d": {},
    }
    for name, value in labels.items():
        server.create(CONFIGMAPS, configmap(name, labels=value), "default")
    listed = http("GET", "/api/v1/namespaces/default/configmaps", params={"labelSelector": selector}).json()
    assert names(listed["items"]) == expected


def test_field_selectors_on_name_and_namespace_filter_lists(server: EmulatorServer, http: Http) -> None:
    server.create("v1/namespaces", {"metadata": {"name": "other"}})
    for namespace, name in [("default", "p1"), ("default", "p2"), ("other", "p3")]:
        server.create("v1/pods", {"metadata": {"name": name}, "spec": {"containers": []}}, namespace)

    def listed(path: str, selector: str) -> set[str]:
        rsp = http("GET", path, params={"fieldSelector": selector})
        assert rsp.json()["kind"] == "PodList"
        return names(rsp.json()["items"])

    assert listed("/api/v1/pods", "metadata.namespace=other") == {"p3"}
    assert listed("/api/v1/namespaces/default/pods", "metadata.name=p2") == {"p2"}
    assert listed("/api/v1/pods", "metadata.name!=p1,metadata.namespace=default") == {"p2"}
    unsupported = http("GET", "/api/v1/pods", params={"fieldSelector": "status.phase=Running"})
    assert unsupported.status_code == 400


def test_discovery_serves_core_v1_and_crd_groups_registered_at_runtime(
    server: EmulatorServer, http: Http
) -> None:
    assert http("GET", "/api").json() == {"kind": "APIVersions", "versions": ["v1"]}
    core = {entry["name"]: entry for entry in http("GET", "/api/v1").json()["resources"]}
    assert (core["configmaps"]["namespaced"], core["namespaces"]["namespaced"]) == (True, False)
    assert core["pods"]["shortNames"] == ["po"]
    assert "pods/status" in core

    gizmo_crd = json.loads(json.dumps(WIDGET_CRD).replace("widget", "gizmo").replace("Widget", "Gizmo"))
    gizmo_crd["spec"]["group"] = "example.org"
    gizmo_crd["metadata"]["name"] = "gizmos.example.org"
    gizmo_crd["spec"]["names"]["shortNames"] = ["gz"]
    crd = http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", gizmo_crd).json()
    assert {"type": "Established", "status": "True"}.items() <= crd["status"]["conditions"][1].items()
    assert crd["status"]["acceptedNames"]["kind"] == "Gizmo"
    assert "example.org" in [group["name"] for group in http("GET", "/apis").json()["groups"]]
    gizmos = http("GET", "/apis/example.org/v1").json()["resources"]
    assert gizmos[0] | {"shortNames": ["gz"], "kind": "Gizmo", "namespaced": True} == gizmos[0]

    path = "/apis/example.org/v1/namespaces/default/gizmos"
    gizmo = {"apiVersion": "example.org/v1", "kind": "Gizmo", "metadata": {"name": "g"}, "spec": {"size": 1}}
    assert http("POST", path, gizmo).status_code == 201


def test_custom_resources_are_admitted_by_their_crd_schema_and_rules(http: Http) -> None:
    enum = http("POST", WIDGET_PATH, widget("w") | {"spec": {"size": 1, "color": "green"}})
    assert enum.status_code == 422
    assert "spec.color" in enum.json()["message"]

    rule = http("POST", WIDGET_PATH, widget("w") | {"spec": {"size": 5, "limit": 3}})
    assert rule.status_code == 422
    assert "size over limit" in rule.json()["message"]

    # Unknown fields are refused even when kubectl --validate=false asks to ignore them.
    unknown = http(
        "POST",
        WIDGET_PATH,
        widget("w") | {"spec": {"size": 1, "sise": 2}},
        params={"fieldValidation": "Ignore"},
    )
    assert unknown.status_code == 400
    assert "sise" in unknown.json()["message"]

    http("POST", WIDGET_PATH, widget("w"))
    patched = http("PATCH", f"{WIDGET_PATH}/w", {"spec": {"size": -1}}, content_type=MERGE)
    assert patched.status_code == 422
    assert "spec.size" in patched.json()["message"]


# Errors.


CONFIGMAPS_PATH = "/api/v1/namespaces/default/configmaps"
PROTOBUF = "application/vnd.kubernetes.protobuf"
APPLY = "application/apply-patch+yaml"


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (("POST", WIDGET_PATH, b"{not json", "application/json"), (400, "BadRequest")),
        (("GET", "/apis/example.com/v1/namespaces/default/gizmos", None, ""), (404, "NotFound")),
        (("GET", "/apis/nowhere.io/v1/things", None, ""), (404, "NotFound")),
        (("GET", f"{WIDGET_PATH}/missing", None, ""), (404, "NotFound")),
        (("GET", "/openapi/v2", None, ""), (404, "NotFound")),
        (("PUT", f"{WIDGET_PATH}/w", {}, "application/json"), (405, "MethodNotAllowed")),
        (("POST", f"{WIDGET_PATH}?dryRun=All", widget("w"), "application/json"), (400, "BadRequest")),
        (("POST", CONFIGMAPS_PATH, b"\x0a\x02\xff", PROTOBUF), (415, "UnsupportedMediaType")),
        (("PATCH", f"{WIDGET_PATH}/w", b"spec: {}", APPLY), (415, "UnsupportedMediaType")),
        (("POST", CONFIGMAPS_PATH, configmap("Not_Valid"), "application/json"), (422, "Invalid")),
        (("GET", "/api/v1/pods?labelSelector=tier+in+(web)", None, ""), (400, "BadRequest")),
    ],
)
def test_errors_are_kubernetes_status_objects_without_tracebacks(
    http: Http, request_: tuple[str, str, Any, str], expected: tuple[int, str]
) -> None:
    method, path, body, content_type = request_
    rsp = http(method, path, body, content_type=content_type)
    status = rsp.json()
    assert (rsp.status_code, status["code"], status["reason"]) == (expected[0], *expected)
    assert (status["kind"], status["status"]) == ("Status", "Failure")
    assert "Traceback" not in rsp.text


def test_a_crd_with_a_printer_column_path_beyond_dotted_fields_is_refused(http: Http) -> None:
    crd = json.loads(json.dumps(WIDGET_CRD))
    crd["spec"]["versions"][0]["additionalPrinterColumns"][0]["jsonPath"] = (
        '.status.conditions[?(@.type=="Ready")]'
    )
    refused = http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert refused.status_code == 422
    assert "additionalPrinterColumns[0].jsonPath: Forbidden" in refused.json()["message"]


STRATEGIC = "application/strategic-merge-patch+json"


def test_a_strategic_merge_patch_with_directives_is_refused_not_merged(http: Http) -> None:
    http("POST", CONFIGMAPS_PATH, configmap("c1") | {"data": {"a": "one", "b": "two"}})
    plain = http("PATCH", f"{CONFIGMAPS_PATH}/c1", {"data": {"a": "three"}}, content_type=STRATEGIC)
    assert plain.json()["data"] == {"a": "three", "b": "two"}

    directive = {"data": {"$patch": "replace", "a": "four"}}
    refused = http("PATCH", f"{CONFIGMAPS_PATH}/c1", directive, content_type=STRATEGIC)
    assert (refused.status_code, refused.json()["reason"]) == (415, "UnsupportedMediaType")
    assert "strategic merge patches only without directives" in refused.json()["message"]
    assert http("GET", f"{CONFIGMAPS_PATH}/c1").json()["data"] == {"a": "three", "b": "two"}


def test_an_unexpected_failure_is_a_500_status_without_a_traceback(
    http: Http, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: ApiEmulator, target: Any) -> dict[str, Any]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(ApiEmulator, "get_object", broken)
    rsp = http("GET", f"{WIDGET_PATH}/w")
    assert (rsp.status_code, rsp.json()["kind"], rsp.json()["reason"]) == (500, "Status", "InternalError")
    assert "Traceback" not in rsp.text
    assert "secret internals" not in rsp.text


# Watching.


def test_watch_from_a_resource_version_replays_exactly_the_missed_events(
    server: EmulatorServer, http: Http
) -> None:
    since = server.create(WIDGETS, widget("a"), "default")["metadata"]["resourceVersion"]
    server.patch(WIDGETS, "default", "a", {"spec": {"size": 2}})
    server.create(WIDGETS, widget("b"), "default")
    server.create(CONFIGMAPS, configmap("elsewhere"), "default")  # another resource: not in this watch
    server.delete(WIDGETS, "default", "a")

    events = list(http.watch(WIDGET_PATH, resourceVersion=since, timeoutSeconds=1))
    seen = [(event["type"], event["object"]["metadata"]["name"]) for event in events]
    assert seen == [("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    assert events[-1]["object"]["spec"] == {"size": 2}  # DELETED carries the last state
    revisions = [revision(event["object"]) for event in events]
    assert revisions == sorted(set(revisions))


def test_watch_without_a_resource_version_starts_with_the_current_objects(
    server: EmulatorServer, http: Http
) -> None:
    server.create(WIDGETS, widget("a"), "default")
    server.create(WIDGETS, widget("b"), "default")
    events = list(http.watch(WIDGET_PATH, timeoutSeconds=1))
    assert [(event["type"], event["object"]["metadata"]["name"]) for event in events] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
    ]


def test_watch_with_a_selector_sees_objects_enter_and_leave_it(server: EmulatorServer, http: Http) -> None:
    since = server.create(WIDGETS, widget("w", labels={"team": "a"}), "default")["metadata"][
        "resourceVersion"
    ]
    server.patch(WIDGETS, "default", "w", {"metadata": {"labels": {"team": "b"}}})
    server.patch(WIDGETS, "default", "w", {"metadata": {"labels": {"team": "a"}}})
    events = list(http.watch(WIDGET_PATH, resourceVersion=since, labelSelector="team=a", timeoutSeconds=1))
    assert [event["type"] for event in events] == ["DELETED", "ADDED"]


def test_watch_loses_nothing_under_concurrent_writes(server: EmulatorServer, http: Http) -> None:
    server.create(WIDGETS, widget("w"), "default")
    written: list[int] = []

    def write() -> None:
        writer = Http(server.url)
        for size in range(200):
            rsp = writer("PATCH", f"{WIDGET_PATH}/w", {"spec": {"size": size}}, content_type=MERGE)
            written.append(revision(rsp.json()))

    thread = threading.Thread(target=write)
    thread.start()
    wait_for(lambda: len(written) >= 20)  # start watching mid-stream, from a revision already passed
    since = written[9]
    seen: list[int] = []
    for event in http.watch(WIDGET_PATH, resourceVersion=str(since), timeoutSeconds=20):
        seen.append(revision(event["object"]))
        if len(seen) == 190:
            break
    thread.join()
    assert seen == written[10:]  # every write after `since`, each exactly once, in order


def test_watch_from_a_too_old_resource_version_answers_410_expired() -> None:
    with EmulatorServer(crds=[WIDGET_CRD], history_limit=5) as small:
        small.create(WIDGETS, widget("w"), "default")
        for size in range(10):
            latest = small.patch(WIDGETS, "default", "w", {"spec": {"size": size}})
        http = Http(small.url)
        expired = list(http.watch(WIDGET_PATH, resourceVersion="2", timeoutSeconds=1))
        assert len(expired) == 1
        assert expired[0]["type"] == "ERROR"
        assert (expired[0]["object"]["code"], expired[0]["object"]["reason"]) == (410, "Expired")
        recent = str(revision(latest) - 1)
        assert [
            event["type"] for event in http.watch(WIDGET_PATH, resourceVersion=recent, timeoutSeconds=1)
        ] == ["MODIFIED"]


# A real operator.

KOPF_OPERATOR = """
import os

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    settings.persistence.finalizer = "example.com/test-finalizer"


@kopf.on.login()
def login(**_):
    return kopf.ConnectionInfo(server=os.environ["EMULATOR_URL"], insecure=True)


@kopf.on.create("example.com", "v1", "widgets")
def created(body, spec, patch, **_):
    patch.status["seen"] = spec["size"]
    kopf.info(body, reason="Seen", message="created a widget")


@kopf.on.delete("example.com", "v1", "widgets")
def deleted(**_):
    pass
"""


def test_a_kopf_operator_handles_creation_and_deletion_with_its_finalizer(
    server: EmulatorServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "widget_operator.py"  # not "operator.py": Kopf puts its folder on sys.path
    path.write_text(KOPF_OPERATOR)
    monkeypatch.setenv("EMULATOR_URL", server.url)
    # A namespace pattern makes Kopf watch /api/v1/namespaces too.
    # Its own registry: an earlier test that imported kubetune.handlers left the operator's handlers in
    # Kopf's default one, and they would run here too.
    registry = kopf.OperatorRegistry()
    with KopfRunner(
        ["run", "--standalone", "--namespace=def*", str(path)], timeout=30, registry=registry
    ) as runner:
        server.create(WIDGETS, widget("w", size=3), "default")
        handled = wait_for(
            lambda: (obj := server.get(WIDGETS, "default", "w")) and "seen" in obj.get("status", {}) and obj
        )
        assert handled["status"]["seen"] == 3
        assert "example.com/test-finalizer" in handled["metadata"]["finalizers"]

        server.delete(WIDGETS, "default", "w")
        wait_for(lambda: server.get(WIDGETS, "default", "w") is None)
        # Kopf posts its k8s events in the background.
        wait_for(lambda: any(event["reason"] == "Seen" for event in server.list("v1/events", "default")))
    assert runner.exception is None
    assert runner.exit_code == 0
    assert "Traceback" not in runner.output
