"""The Kubernetes API, as little of it as the operator needs: get, list, watch, create, patch, delete.

A thin aiohttp client built from Kopf's own login (kubeconfig or in-cluster service account), so the
operator has one set of credentials and one event loop. Requests (not watches) pass a client-side token
bucket and wait out 429 Retry-After; a service-account token is re-read from its projected file, as
client-go does, so that the kubelet's rotation of bound tokens never ends in 401s.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from json import loads as parse_json
from typing import Any
from urllib.parse import quote

import aiohttp

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# Where the kubelet projects the service account's bound token (Kopf's login_with_service_account reads it).
SERVICE_ACCOUNT_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
TOKEN_RELOAD_SECONDS = 60.0  # client-go's cached file token source re-reads once a minute
DEFAULT_QPS = 50
DEFAULT_BURST = 100
THROTTLED_RETRIES = 5  # 429s waited out before the error is raised
MAX_RETRY_AFTER_SECONDS = 60.0

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
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "jobsets",
    ("coordination.k8s.io/v1", "Lease"): "leases",  # leader election
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
    token_path: str | None = None  # a file to re-read the token from (a projected service-account token)

    @classmethod
    def from_kopf(cls, info: Any, *, token_path: str | None = None) -> Credentials:
        """From a kopf.ConnectionInfo (what Kopf's login handlers return)."""
        return cls(
            server=info.server,
            token=info.token,
            ca_path=info.ca_path,
            ca_data=info.ca_data,
            certificate_path=info.certificate_path,
            private_key_path=info.private_key_path,
            insecure=bool(info.insecure),
            token_path=token_path,
        )


class TokenBucket:
    """At most `qps` requests a second on average, `burst` at once; waiters are served in arrival order."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs qps > 0 and burst >= 1, not {qps} and {burst}")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.qps)
        self._updated = now

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: one waiter sleeps for its token while the others queue behind it
            self._refill()
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.qps)
                self._refill()
            self._tokens -= 1


def retry_after_seconds(header: str | None) -> float:
    """A 429's Retry-After (delta seconds; the API server sends whole seconds), bounded; 1 s if absent."""
    try:
        seconds = float(header) if header else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class KubeClient:
    def __init__(
        self,
        credentials: Credentials,
        *,
        timeout_seconds: float = 30.0,
        qps: float = DEFAULT_QPS,
        burst: int = DEFAULT_BURST,
        token_reload_seconds: float = TOKEN_RELOAD_SECONDS,
    ) -> None:
        self._credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None
        self._bucket = TokenBucket(qps, burst)
        self._token = credentials.token
        self._token_reload_seconds = token_reload_seconds
        self._token_checked = time.monotonic()  # the login handler has just read it
        self.unauthorized_streak = 0  # consecutive 401s, the liveness probe's signal of a dead credential

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

    def _new_session(self, connections: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            base_url=self._credentials.server.rstrip("/"),
            headers={"Accept": "application/json", "User-Agent": "kubetune-operator"},
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=connections),
        )

    async def _session_(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._new_session(32)
        return self._session

    async def _watch_session_(self) -> aiohttp.ClientSession:
        # Apart, and unbounded: each open watch holds a connection (HTTP/1.1), 4 per watched namespace,
        # and must never take one that requests are waiting for.
        if self._watch_session is None or self._watch_session.closed:
            self._watch_session = self._new_session(0)
        return self._watch_session

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()

    # Credentials.

    def reload_token(self) -> bool:
        """Re-read the token file now; True when the token changed. A missing or unreadable file keeps the
        token in use (the kubelet replaces the file atomically, so a read never sees half a token)."""
        path = self._credentials.token_path
        self._token_checked = time.monotonic()
        if path is None:
            return False
        try:
            with open(path, encoding="utf-8") as file:
                token = file.read().strip() or None
        except OSError as error:
            logger.warning("could not re-read the API token from %s: %s", path, error)
            return False
        changed = token != self._token
        if changed:
            logger.info("the API token in %s changed: using the new one", path)
            self._token = token
        return changed

    def _auth_headers(self) -> dict[str, str]:
        if time.monotonic() - self._token_checked >= self._token_reload_seconds:
            self.reload_token()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _note(self, status: int) -> None:
        self.unauthorized_streak = self.unauthorized_streak + 1 if status == 401 else 0

    # Requests.

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
        reloaded = False
        throttled = 0
        while True:
            await self._bucket.acquire()
            headers = self._auth_headers()
            if content_type:
                headers["Content-Type"] = content_type
            async with session.request(method, path, json=json, params=params, headers=headers) as response:
                try:
                    body: dict[str, Any] | str = await response.json(content_type=None)
                except ValueError:
                    body = await response.text()
                retry_after = response.headers.get("Retry-After")
                status = response.status
            # A 429 was refused before any work (API priority and fairness): safe to resend, whatever the verb.
            if status == 429 and throttled < THROTTLED_RETRIES:
                throttled += 1
                await asyncio.sleep(retry_after_seconds(retry_after))
                continue
            # Rotated under us: read the file once more; resend only if that gave a different token.
            if status == 401 and not reloaded:
                reloaded = True
                if self.reload_token():
                    continue
            self._note(status)
            if status >= 400:
                raise ApiError(status, body)
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

    async def serves(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves this kind (discovery): an optional API such as JobSet's."""
        try:
            body = await self._request("GET", f"/apis/{api_version}")
        except ApiError as error:
            if error.status in (403, 404):  # absent, or hidden from us: either way, not ours to use
                return False
            raise
        plural = _PLURALS[(api_version, kind)]
        return any(r.get("name") == plural for r in body.get("resources") or [])

    async def list_with_version(
        self, api_version: str, kind: str, namespace: str | None, *, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """The items and the list's resourceVersion, where a watch of the same selector starts."""
        params = {"labelSelector": label_selector} if label_selector else None
        body = await self._request("GET", resource_path(api_version, kind, namespace), params=params)
        return list(body.get("items") or []), str((body.get("metadata") or {}).get("resourceVersion", ""))

    async def list(
        self, api_version: str, kind: str, namespace: str | None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        items, _ = await self.list_with_version(api_version, kind, namespace, label_selector=label_selector)
        return items

    async def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        *,
        resource_version: str,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch events ({"type", "object"}) after `resource_version` until the server ends the stream.

        Not rate-limited: one long request per kind and namespace. An HTTP error raises ApiError; an
        expired version arrives as an ERROR event with code 410, as the API server sends it."""
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            params["labelSelector"] = label_selector
        session = await self._watch_session_()
        # No total limit; a stream silent well past the server's own timeout is a dead connection.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout_seconds + 30)
        path = resource_path(api_version, kind, namespace)
        async with session.get(
            path, params=params, headers=self._auth_headers(), timeout=timeout
        ) as response:
            if response.status >= 400:
                try:
                    body: dict[str, Any] | str = await response.json(content_type=None)
                except ValueError:
                    body = await response.text()
                if response.status == 401:
                    self.reload_token()  # the next attempt (the caller backs off) sends the new one
                self._note(response.status)
                raise ApiError(response.status, body)
            self._note(response.status)
            buffer = b""
            # Lines split by hand: aiohttp's readline refuses lines over 128 KiB, and objects can be larger.
            async for chunk in response.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield parse_json(line)
            if buffer.strip():
                yield parse_json(buffer)

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
