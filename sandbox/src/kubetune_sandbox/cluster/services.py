"""Services: each one gets a stable loopback clusterIP (127.2.x.y) and a TCP proxy on its ports that spreads
connections round-robin over the ready pods its selector matches (targetPort by number or by name).

Headless Services (`clusterIP: None`) and Services without a selector get no proxy, as in a cluster.
The proxies run on one asyncio loop in their own thread; the loop also polls the API for changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import threading
from dataclasses import dataclass, field

from kubetune_sandbox.cluster import decisions
from kubetune_sandbox.cluster.api import PODS, SERVICES, Cluster, Obj, log

SERVICE_IP_PREFIX = 2
CHUNK = 65536


@dataclass
class _Listener:
    server: asyncio.Server
    port: Obj
    backends: list[tuple[str, int]] = field(default_factory=list)
    turn: itertools.count[int] = field(default_factory=itertools.count)

    def pick(self) -> tuple[str, int] | None:
        if not self.backends:
            return None
        return self.backends[next(self.turn) % len(self.backends)]


class ServiceProxy:
    def __init__(self, cluster: Cluster, *, poll_seconds: float = 0.25) -> None:
        self.cluster = cluster
        self.poll_seconds = poll_seconds
        self.ips: dict[str, str] = {}  # service uid -> clusterIP
        self._listeners: dict[tuple[str, int], _Listener] = {}  # (service uid, port) -> listener
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-service-proxy", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._ready.set()
        try:
            while not self._stopping.is_set():
                try:
                    await self._sync()
                except Exception:
                    log.exception("sandbox service proxy: sync failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.poll_seconds)
        finally:
            for listener in self._listeners.values():
                listener.server.close()
            self._listeners.clear()

    def _allocate(self, uid: str) -> str:
        if uid not in self.ips:
            self._next += 1
            self.ips[uid] = decisions.loopback_address(SERVICE_IP_PREFIX, self._next)
        return self.ips[uid]

    async def _sync(self) -> None:
        loop = asyncio.get_running_loop()
        services = await loop.run_in_executor(None, self.cluster.list, SERVICES)
        pods = await loop.run_in_executor(None, self.cluster.list, PODS)
        wanted: set[tuple[str, int]] = set()
        for service in services:
            spec = service.get("spec") or {}
            if spec.get("clusterIP") == "None" or not spec.get("selector"):
                continue
            uid = service["metadata"]["uid"]
            ip = self._allocate(uid)
            if spec.get("clusterIP") != ip:
                meta = service["metadata"]
                patch = {"spec": {"clusterIP": ip, "clusterIPs": [ip]}}
                await loop.run_in_executor(
                    None,
                    functools.partial(
                        self.cluster.patch, SERVICES, meta.get("namespace"), meta["name"], patch
                    ),
                )
            namespace = service["metadata"].get("namespace", "default")
            ready = [
                p
                for p in pods
                if p["metadata"].get("namespace", "default") == namespace
                and decisions.pod_ready(p)
                and (p.get("status") or {}).get("podIP")
                and decisions.selector_matches(spec["selector"], p["metadata"].get("labels"))
            ]
            for port in spec.get("ports") or []:
                key = (uid, int(port["port"]))
                wanted.add(key)
                listener = self._listeners.get(key)
                if listener is None:
                    try:
                        server = await asyncio.start_server(self._handler(key), ip, int(port["port"]))
                    except OSError as error:
                        log.warning("service %s: cannot listen on %s:%s: %s", service["metadata"]["name"], ip,
                                    port["port"], error)  # fmt: skip
                        continue
                    listener = self._listeners[key] = _Listener(server, port)
                target = port.get("targetPort", port["port"])
                backends = []
                for pod in ready:
                    number = decisions.resolve_port(target, (pod.get("spec") or {}).get("containers") or [])
                    if number:
                        backends.append((str(pod["status"]["podIP"]), number))
                listener.backends = sorted(backends)
        for key in set(self._listeners) - wanted:
            self._listeners.pop(key).server.close()

    def _handler(self, key: tuple[str, int]):  # type: ignore[no-untyped-def]
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            listener = self._listeners.get(key)
            upstream = await _connect_to_any(listener) if listener else None
            if upstream is None:
                writer.close()  # no ready endpoint answers: a cluster refuses the connection too
                return
            upstream_reader, upstream_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
            except asyncio.CancelledError:
                pass  # the proxy is stopping; asyncio would log a cancelled connection task as an error
            finally:
                for end in (writer, upstream_writer):
                    with contextlib.suppress(Exception):
                        end.close()

        return handle


async def _connect_to_any(
    listener: _Listener,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """Round-robin over the ready endpoints, skipping one that just went away (a pod deleted before the
    next endpoint sync), as kube-proxy's retries to another endpoint do."""
    for _ in range(len(listener.backends)):
        backend = listener.pick()
        if backend is None:
            return None
        try:
            return await asyncio.open_connection(*backend)
        except OSError:
            continue
    return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        # Half-close only: the other direction may still carry the answer.
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()
