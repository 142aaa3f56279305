"""A small fault-injecting HTTP proxy: in front of the API emulator (for the operator) or moto (for the
trainer's S3 client). A `decide` callback picks, per request, whether it passes, fails or is cut off."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import aiohttp.web

# What a fault looks like on the wire.
PASS = "pass"
DROP = "drop"  # close the connection without an answer (a dead peer, a timeout, a truncated upload)
CUT_STREAM = "cut-stream"  # forward, but end a streamed (watch) answer after a moment


@dataclass(frozen=True)
class Respond:
    """Answer this instead of forwarding."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"


Decision = str | Respond
Decide = Callable[[aiohttp.web.BaseRequest, bytes], Decision]
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
_RESPONSE_HOP_HEADERS = {"transfer-encoding", "connection", "keep-alive"}  # Content-Length stays (HEAD)


@dataclass
class FaultProxy:
    upstream: str
    decide: Decide
    cut_after_seconds: float = 1.0
    url: str = ""
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, decision)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    def __enter__(self) -> FaultProxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve(ready)), daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(10)

    def faults(self) -> list[tuple[str, str, str]]:
        return [entry for entry in self.log if entry[2] != PASS]

    async def _serve(self, ready: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
        ) as session:
            self._session = session
            runner = aiohttp.web.ServerRunner(aiohttp.web.Server(self._handle), shutdown_timeout=0.5)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            ready.set()
            await self._stop.wait()
            await runner.cleanup()

    async def _handle(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await request.read()
        decision = self.decide(request, body)
        self.log.append(
            (request.method, request.path, decision if isinstance(decision, str) else str(decision.status))
        )
        if isinstance(decision, Respond):
            return aiohttp.web.Response(
                status=decision.status, body=decision.body, content_type=decision.content_type
            )
        if decision == DROP:
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("dropped by the fault proxy")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body or None
        ) as upstream:
            response = aiohttp.web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in _RESPONSE_HOP_HEADERS},
            )
            await response.prepare(request)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.cut_after_seconds if decision == CUT_STREAM else None
            while True:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    chunk = await asyncio.wait_for(upstream.content.readany(), timeout)
                except TimeoutError:
                    # A dropped watch: the connection dies mid-stream, no clean end.
                    if request.transport is not None:
                        request.transport.close()
                    return response
                if not chunk:
                    break
                await response.write(chunk)
            await response.write_eof()
            return response
