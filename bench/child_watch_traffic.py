"""What the operator receives about Pods, Jobs and Deployments it does not own: N unrelated pods on the API
emulator, each changed once, with the operator watching (a) with server-side label selectors (this tree) or
(b) another tree's operator, e.g. Kopf's client-side filtered `on.event(labels=...)` before issue 13:

    git archive 4239ea7 operator/src | tar -x -C /tmp/before
    .venv/bin/python bench/child_watch_traffic.py --pods 2000                      # this tree
    .venv/bin/python bench/child_watch_traffic.py --pods 2000 --operator-src /tmp/before/operator/src

A counting proxy between the operator and the emulator measures the bytes and objects of every child list
and watch response (one watch event per line); the operator's RSS (VmRSS, VmHWM) is read from /proc after
the changes settled. The last output line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web

CHILD_PATH = re.compile(r"/(pods|jobs|deployments)/?$")


class CountingProxy:
    """Forwards everything; counts response bytes and objects for child lists and watches."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self.bytes: Counter[str] = Counter()
        self.objects: Counter[str] = Counter()
        self.requests: list[str] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            self._session = session
            runner = aiohttp.web.ServerRunner(aiohttp.web.Server(self._handle), shutdown_timeout=0.5)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    async def _handle(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await request.read()
        match = CHILD_PATH.search(request.path) if request.method == "GET" else None
        kind = match.group(1) if match else None
        watching = request.query.get("watch") in ("true", "1")
        if kind:
            self.requests.append(request.path_qs)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body or None
        ) as upstream:
            response = aiohttp.web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() in ("content-type",)},
            )
            await response.prepare(request)
            listing = b""
            async for chunk in upstream.content.iter_any():
                if kind:
                    self.bytes[kind] += len(chunk)
                    if watching:
                        self.objects[kind] += chunk.count(b"\n")
                    else:
                        listing += chunk
                await response.write(chunk)
            if kind and not watching and upstream.status == 200:
                self.objects[kind] += len(json.loads(listing).get("items") or [])
            await response.write_eof()
            return response


def unrelated_pod(n: int) -> dict[str, Any]:
    """A pod of some other team's workload, about the size of a small real one."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"web-{n:05d}",
            "labels": {"app": "web", "pod-template-hash": "5d8f7c9b4", "team": "shop"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
        },
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "registry.example.com/shop/web:1.27.3",
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "env": [{"name": f"SETTING_{i}", "value": f"value-{i}-" + "x" * 24} for i in range(12)],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                }
            ]
        },
    }


def rss_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM")}  # type: ignore[union-attr]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--operator-src", help="run the operator from this source folder (PYTHONPATH)")
    parser.add_argument("--settle-seconds", type=float, default=8.0)
    args = parser.parse_args()

    from kubetune.api.crd import all_crds
    from kubetune_sandbox.emulator.server import EmulatorServer

    with EmulatorServer(crds=all_crds()) as emulator, CountingProxy(emulator.url) as proxy:
        started = time.monotonic()
        for n in range(args.pods):
            emulator.create("v1/pods", unrelated_pod(n), "default")
        created_seconds = time.monotonic() - started
        home = Path(tempfile.mkdtemp())
        kubeconfig = emulator.kubeconfig(home / "kubeconfig")
        text = kubeconfig.read_text().replace(emulator.url, proxy.url)
        kubeconfig.write_text(text)
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_RESYNC_SECONDS": "3600",
            "KUBETUNE_SCRAPE_PROGRESS": "false",
        }
        if args.operator_src:
            env["PYTHONPATH"] = args.operator_src
        log = (home / "operator.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "kubetune.cli.main", "operator", "--health-port", "0", "--no-json-logs"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while not any("pods?" in r and "watch=" in r for r in proxy.requests):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"the operator never watched pods; see {home / 'operator.log'}")
                time.sleep(0.2)
            time.sleep(2)
            at_start = {
                "bytes": dict(proxy.bytes),
                "objects": dict(proxy.objects),
                "rss_kib": rss_kib(process.pid),
            }
            cpu_before_changes = cpu_seconds(process.pid)
            for n in range(args.pods):
                emulator.patch(
                    "v1/pods",
                    "default",
                    f"web-{n:05d}",
                    {"status": {"phase": "Running"}},
                    subresource="status",
                )
            time.sleep(args.settle_seconds)
            result = {
                "operator": args.operator_src or "this tree",
                "unrelated_pods": args.pods,
                "create_seconds": round(created_seconds, 1),
                "after_start": at_start,
                "total": {"bytes": dict(proxy.bytes), "objects": dict(proxy.objects)},
                "rss_kib": rss_kib(process.pid),
                "operator_cpu_seconds_for_the_changes": round(
                    cpu_seconds(process.pid) - cpu_before_changes, 2
                ),
                "child_requests": sorted({re.sub(r"resourceVersion=\d+&?", "", r) for r in proxy.requests}),
            }
        finally:
            process.terminate()
            process.wait(20)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
