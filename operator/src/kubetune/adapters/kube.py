"""The Kubernetes API, as little of it as the operator needs: get, list, create, patch, delete.

A thin aiohttp client built from Kopf's own login (kubeconfig or in-cluster service account), so the
operator has one set of credentials and one event loop.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# (apiVersion, kind) -> plural; the operator only touches these kinds.
_PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Secret"): "secrets",
    ("v1", "Event"): "events",
    ("batch/v1", "Job"): "jobs",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("kubetune.dev/v1alpha1", "FineTuneJob"): "finetunejobs",
    ("kubetune.dev/v1alpha1", "ModelDeployment"): "modeldeployments",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
}


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any] | str) -> None:
        self.status = status
        self.body = body
        message = body.get("message", "") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")

    @property
    def reason(self) -> str:
        return str(self.body.get("reason", "")) if isinstance(self.body, dict) else ""


def resource_path(
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    plural = _PLURALS[(api_version, kind)]
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{root}/namespaces/{quote(namespace)}/{plural}" if namespace else f"{root}/{plural}"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


@dataclass(frozen=True)
class Credentials:
    server: str
    token: str | None = None
    ca_path: str | None = None
    ca_data: bytes | None = None
    certificate_path: str | None = None
    private_key_path: str | None = None
    insecure: bool = False

    @classmethod
    def from_kopf(cls, info: Any) -> Credentials:
        """From a kopf.ConnectionInfo (what Kopf's login handlers return)."""
        return cls(
            server=info.server,
            token=info.token,
            ca_path=info.ca_path,
            ca_data=info.ca_data,
            certificate_path=info.certificate_path,
            private_key_path=info.private_key_path,
            insecure=bool(info.insecure),
        )


class KubeClient:
    def __init__(self, credentials: Credentials, *, timeout_seconds: float = 30.0) -> None:
        self._credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        creds = self._credentials
        if not creds.server.startswith("https"):
            return False
        if creds.insecure:
            return False
        context = ssl.create_default_context(
            cafile=creds.ca_path, cadata=creds.ca_data.decode() if creds.ca_data else None
        )
        if creds.certificate_path and creds.private_key_path:
            context.load_cert_chain(creds.certificate_path, creds.private_key_path)
        return context

    async def _session_(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json", "User-Agent": "kubetune-operator"}
            if self._credentials.token:
                headers["Authorization"] = f"Bearer {self._credentials.token}"
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=32)
            self._session = aiohttp.ClientSession(
                base_url=self._credentials.server.rstrip("/"),
                headers=headers,
                timeout=self._timeout,
                connector=connector,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        session = await self._session_()
        headers = {"Content-Type": content_type} if content_type else None
        async with session.request(method, path, json=json, params=params, headers=headers) as response:
            try:
                body: dict[str, Any] | str = await response.json(content_type=None)
            except ValueError:
                body = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, body)
            return body if isinstance(body, dict) else {}

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            return await self._request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str | None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        body = await self._request("GET", resource_path(api_version, kind, namespace), params=params)
        return list(body.get("items") or [])

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create, or return the existing object of that name: fixed child names make this idempotent."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            return await self._request("POST", path, json=manifest)
        except ApiError as error:
            if error.status != 409 or error.reason != "AlreadyExists":
                raise
            existing = await self.get(
                manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]
            )
            if existing is None:
                raise
            return existing

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        json_patch: bool = False,
    ) -> dict[str, Any]:
        path = resource_path(api_version, kind, namespace, name, subresource)
        return await self._request(
            "PATCH", path, json=patch, content_type=JSON_PATCH if json_patch else MERGE_PATCH
        )

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        path = resource_path(api_version, kind, namespace, name)
        try:
            await self._request(
                "DELETE",
                path,
                json={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except ApiError as error:
            if error.status != 404:
                raise
