"""Fixtures for the API emulator tests: a running emulator with a small test CRD, and clients for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import requests

from kubetune_sandbox.emulator.server import EmulatorServer

WIDGETS = "example.com/v1/widgets"

# A test-only CRD: short name, category, status subresource, printer columns, an enum and a CEL rule.
WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {
            "plural": "widgets",
            "singular": "widget",
            "kind": "Widget",
            "shortNames": ["wd"],
            "categories": ["gadgets"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "size": {"type": "integer", "minimum": 0},
                                    "limit": {"type": "integer"},
                                    "color": {"type": "string", "enum": ["red", "blue"]},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "!has(self.limit) || self.size <= self.limit",
                                        "message": "size over limit",
                                    }
                                ],
                            },
                            "status": {
                                "type": "object",
                                "properties": {"phase": {"type": "string"}, "seen": {"type": "integer"}},
                            },
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, size: int = 1, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": name, **metadata},
        "spec": {"size": size},
    }


class Http:
    """Raw HTTP against the emulator, for what typed clients hide (status codes, content types)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, Any] | None = None,
    ) -> requests.Response:
        data = body if isinstance(body, bytes | str) or body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        return self.session.request(
            method, self.url + path, data=data, headers=headers, params=params, timeout=10
        )

    def watch(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Stream watch events until the server ends the stream (pass timeoutSeconds) or the caller stops."""
        with self.session.get(
            self.url + path, params={"watch": "true", **params}, stream=True, timeout=30
        ) as rsp:
            assert rsp.status_code == 200, rsp.text
            for line in rsp.iter_lines():
                if line:
                    yield json.loads(line)


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(crds=[WIDGET_CRD]) as running:
        yield running


@pytest.fixture
def http(server: EmulatorServer) -> Http:
    return Http(server.url)


@pytest.fixture
def k8s(server: EmulatorServer, tmp_path: Path) -> Iterator[kubernetes.client.ApiClient]:
    """The official Python client, configured from the kubeconfig the server writes."""
    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig")
    with kubernetes.config.new_client_from_config(config_file=str(kubeconfig)) as client:
        yield client
