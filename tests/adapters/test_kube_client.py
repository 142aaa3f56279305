"""The operator's API client against a real aiohttp server: its token bucket, 429 Retry-After, the
projected service-account token re-read on rotation, the 401 streak the liveness probe reads, and watch
streams. Timing assertions are lower bounds or counts in windows, which load on the machine cannot break."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp.web
import kopf
import pytest
import pytest_asyncio

from kubetune.adapters.kube import THROTTLED_RETRIES, ApiError, Credentials, KubeClient, TokenBucket
from kubetune.handlers import startup
from kubetune.handlers.runtime import RUNTIME

pytestmark = pytest.mark.asyncio

Handler = Callable[[aiohttp.web.Request], Awaitable[aiohttp.web.StreamResponse]]


@dataclass
class FakeApi:
    """A real HTTP server; each test says how it answers and reads back what arrived when."""

    handler: Handler
    url: str = ""
    arrivals: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic, path_qs, auth)

    async def __call__(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self.arrivals.append((time.monotonic(), request.path_qs, request.headers.get("Authorization", "")))
        return await self.handler(request)


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[FakeApi]]]:
    runners: list[aiohttp.web.BaseRunner] = []

    async def start(handler: Handler) -> FakeApi:
        api = FakeApi(handler)
        runner = aiohttp.web.ServerRunner(aiohttp.web.Server(api), shutdown_timeout=0.1)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        api.url = f"http://127.0.0.1:{port}"
        return api

    yield start
    for runner in runners:
        await runner.cleanup()


async def ok(_: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
    return aiohttp.web.json_response({"kind": "ConfigMap", "metadata": {"name": "x"}})


def client_for(api: FakeApi, **kwargs: object) -> KubeClient:
    token_path = kwargs.pop("token_path", None)
    token = kwargs.pop("token", None)
    credentials = Credentials(server=api.url, token=token, token_path=token_path)  # type: ignore[arg-type]
    return KubeClient(credentials, **kwargs)  # type: ignore[arg-type]


# -- the token bucket ----------------------------------------------------------------------------------


async def test_requests_beyond_the_burst_are_paced_at_qps(
    serve: Callable[[Handler], Awaitable[FakeApi]],
) -> None:
    api = await serve(ok)
    client = client_for(api, qps=20, burst=5)
    started = time.monotonic()
    try:
        await asyncio.gather(*(client.get("v1", "ConfigMap", "default", "x") for _ in range(25)))
    finally:
        await client.close()
    times = sorted(t - started for t, _, _ in api.arrivals)
    assert len(times) == 25
    # 20 requests past the burst at 20 a second cannot take less than a second, however loaded the machine.
    assert times[-1] >= 0.9
    # And no half-second window holds more than the bucket allows: burst + qps * 0.5 (+1 for the edge).
    for start in times:
        assert sum(1 for t in times if start <= t < start + 0.5) <= 5 + 10 + 1


async def test_a_bucket_refills_at_qps_up_to_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(qps=10, burst=3, clock=lambda: now[0])
    for _ in range(3):
        await bucket.acquire()  # the burst, without waiting
    now[0] += 100.0  # a long idle time refills only up to the burst
    for _ in range(3):
        await bucket.acquire()
    assert bucket._tokens == pytest.approx(0.0)
    with pytest.raises(ValueError, match="qps > 0"):
        TokenBucket(qps=0, burst=1)


async def test_watches_bypass_the_bucket(serve: Callable[[Handler], Awaitable[FakeApi]]) -> None:
    """With one token a minute, a second GET waits; a watch opened after it still reaches the server first."""

    async def answer(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        if request.query.get("watch") == "true":
            return aiohttp.web.Response(text="", content_type="application/json")
        return await ok(request)

    api = await serve(answer)
    client = client_for(api, qps=1 / 60, burst=1)
    try:
        await client.get("v1", "ConfigMap", "default", "x")
        waiting = asyncio.create_task(client.get("v1", "ConfigMap", "default", "x"))
        events = [e async for e in client.watch("v1", "ConfigMap", "default", resource_version="1")]
        assert events == []
        assert [("watch=true" in path) for _, path, _ in api.arrivals] == [False, True]
        waiting.cancel()
    finally:
        await client.close()


# -- 429 Too Many Requests -----------------------------------------------------------------------------


async def test_a_429_is_waited_out_for_its_retry_after(
    serve: Callable[[Handler], Awaitable[FakeApi]],
) -> None:
    answers = iter([429, 200])

    async def answer(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        if next(answers) == 429:
            return aiohttp.web.json_response(
                {"kind": "Status", "code": 429, "reason": "TooManyRequests"},
                status=429,
                headers={"Retry-After": "1"},
            )
        return await ok(request)

    api = await serve(answer)
    client = client_for(api)
    try:
        assert await client.get("v1", "ConfigMap", "default", "x") == {
            "kind": "ConfigMap",
            "metadata": {"name": "x"},
        }
    finally:
        await client.close()
    assert len(api.arrivals) == 2
    assert api.arrivals[1][0] - api.arrivals[0][0] >= 0.95  # it waited the second the server asked for


async def test_a_429_that_persists_is_raised_after_a_few_retries(
    serve: Callable[[Handler], Awaitable[FakeApi]],
) -> None:
    async def answer(_: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        return aiohttp.web.json_response(
            {"code": 429, "message": "slow down"}, status=429, headers={"Retry-After": "0"}
        )

    api = await serve(answer)
    client = client_for(api)
    try:
        with pytest.raises(ApiError, match="HTTP 429: slow down"):
            await client.get("v1", "ConfigMap", "default", "x")
    finally:
        await client.close()
    assert len(api.arrivals) == 1 + THROTTLED_RETRIES


# -- the projected token -------------------------------------------------------------------------------


def rotate(path: Path, token: str) -> None:
    """As the kubelet does: a new file moved over the old one."""
    staged = path.with_suffix(".new")
    staged.write_text(token + "\n")
    os.replace(staged, path)


def accepting(valid: list[str]) -> Handler:
    """Only the tokens in `valid` (changed by the test as tokens expire)."""

    async def answer(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        if request.headers.get("Authorization") not in [f"Bearer {token}" for token in valid]:
            return aiohttp.web.json_response({"code": 401, "message": "Unauthorized"}, status=401)
        return await ok(request)

    return answer


async def test_a_rotated_token_is_reread_on_the_401_and_the_request_succeeds(
    serve: Callable[[Handler], Awaitable[FakeApi]], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    rotate(token_file, "first")
    current = ["first"]
    api = await serve(accepting(current))
    client = client_for(api, token="first", token_path=str(token_file), token_reload_seconds=3600)
    try:
        await client.get("v1", "ConfigMap", "default", "x")
        current[0] = "second"  # the old token expires as the kubelet writes the new one
        rotate(token_file, "second")
        await client.get("v1", "ConfigMap", "default", "x")
    finally:
        await client.close()
    assert [auth for _, _, auth in api.arrivals] == ["Bearer first", "Bearer first", "Bearer second"]
    assert client.unauthorized_streak == 0


async def test_without_the_token_file_the_same_rotation_ends_in_401(
    serve: Callable[[Handler], Awaitable[FakeApi]],
) -> None:
    """What the operator did before: the token read once at login."""
    current = ["first"]
    api = await serve(accepting(current))
    client = client_for(api, token="first")
    try:
        await client.get("v1", "ConfigMap", "default", "x")
        current[0] = "second"
        with pytest.raises(ApiError, match="HTTP 401"):
            await client.get("v1", "ConfigMap", "default", "x")
    finally:
        await client.close()
    assert client.unauthorized_streak == 1


async def test_the_token_file_is_reread_periodically_before_any_401(
    serve: Callable[[Handler], Awaitable[FakeApi]], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    rotate(token_file, "first")
    valid = ["first"]
    api = await serve(accepting(valid))
    client = client_for(api, token="first", token_path=str(token_file), token_reload_seconds=0)
    try:
        await client.get("v1", "ConfigMap", "default", "x")
        valid.append("second")  # the kubelet rotates at 80% of the lifetime: both are valid for a while
        rotate(token_file, "second")
        await client.get("v1", "ConfigMap", "default", "x")
    finally:
        await client.close()
    assert [auth for _, _, auth in api.arrivals] == ["Bearer first", "Bearer second"]


async def test_a_dead_credential_fails_the_liveness_probe(
    serve: Callable[[Handler], Awaitable[FakeApi]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    rotate(token_file, "revoked")
    api = await serve(accepting(["something else"]))
    client = client_for(api, token="revoked", token_path=str(token_file))
    monkeypatch.setattr(RUNTIME, "_client", client)
    monkeypatch.setattr(RUNTIME, "credentials", Credentials(server=api.url))
    try:
        assert startup.alive() == "ok"
        for attempt in range(startup.UNAUTHORIZED_LIMIT):
            with pytest.raises(ApiError, match="HTTP 401"):
                await client.get("v1", "ConfigMap", "default", "x")
            if attempt < startup.UNAUTHORIZED_LIMIT - 1:
                assert startup.alive() == "ok"  # a few 401s can be a rotation in flight
        with pytest.raises(kopf.PermanentError, match="401 Unauthorized"):
            startup.alive()
        # The file read on each 401 is the same revoked token: no pointless resend.
        assert len(api.arrivals) == startup.UNAUTHORIZED_LIMIT
    finally:
        await client.close()


async def test_one_success_clears_the_401_streak(
    serve: Callable[[Handler], Awaitable[FakeApi]],
) -> None:
    current = ["good"]
    api = await serve(accepting(current))
    client = client_for(api, token="bad")
    try:
        for _ in range(3):
            with pytest.raises(ApiError):
                await client.get("v1", "ConfigMap", "default", "x")
        assert client.unauthorized_streak == 3
        current[0] = "bad"
        await client.get("v1", "ConfigMap", "default", "x")
        assert client.unauthorized_streak == 0
    finally:
        await client.close()


# -- watch streams -------------------------------------------------------------------------------------


async def test_a_watch_sends_the_selector_version_and_bookmarks_and_reads_large_events(
    serve: Callable[[Handler], Awaitable[FakeApi]],
) -> None:
    big = {"metadata": {"name": "big", "resourceVersion": "8", "annotations": {"a": "x" * 300_000}}}
    lines = [
        {"type": "ADDED", "object": big},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
    ]

    async def answer(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse()
        await response.prepare(request)
        for line in lines:  # in small pieces, as a proxy might pass them on
            data = json.dumps(line).encode() + b"\n"
            for start in range(0, len(data), 7000):
                await response.write(data[start : start + 7000])
        await response.write_eof()
        return response

    api = await serve(answer)
    client = client_for(api)
    try:
        events = [
            e
            async for e in client.watch(
                "v1", "Pod", "team-a", resource_version="7", label_selector="a=b,c", timeout_seconds=60
            )
        ]
    finally:
        await client.close()
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert len(events[0]["object"]["metadata"]["annotations"]["a"]) == 300_000
    path = api.arrivals[0][1]
    assert path.startswith("/api/v1/namespaces/team-a/pods?")
    for param in (
        "watch=true",
        "resourceVersion=7",
        "allowWatchBookmarks=true",
        "timeoutSeconds=60",
        "labelSelector=a%3Db,c",
    ):
        assert param in path, (param, path)


async def test_a_refused_watch_raises_with_the_status(serve: Callable[[Handler], Awaitable[FakeApi]]) -> None:
    async def answer(_: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        return aiohttp.web.json_response({"code": 403, "message": "pods is forbidden"}, status=403)

    api = await serve(answer)
    client = client_for(api)
    try:
        with pytest.raises(ApiError, match="HTTP 403: pods is forbidden"):
            async for _ in client.watch("v1", "Pod", None, resource_version="1"):
                pass
    finally:
        await client.close()


# -- settings ------------------------------------------------------------------------------------------


async def test_rate_limit_and_namespaces_are_validated_settings_naming_the_variable() -> None:
    from kubetune.handlers.settings import ConfigError, OperatorConfig

    config = OperatorConfig.from_env({"KUBETUNE_API_QPS": "200", "KUBETUNE_API_BURST": "400"})
    assert (config.api_qps, config.api_burst) == (200, 400)
    assert (OperatorConfig.from_env({}).api_qps, OperatorConfig.from_env({}).api_burst) == (50, 100)
    for env, variable in [
        ({"KUBETUNE_API_QPS": "0"}, "KUBETUNE_API_QPS"),
        ({"KUBETUNE_API_BURST": "many"}, "KUBETUNE_API_BURST"),
        ({"KUBETUNE_WATCH_NAMESPACES": "team-a,team-*"}, "KUBETUNE_WATCH_NAMESPACES"),
    ]:
        with pytest.raises(ConfigError, match=variable):
            OperatorConfig.from_env(env)
    assert OperatorConfig.from_env({"KUBETUNE_WATCH_NAMESPACES": " team-a, team-b "}).namespaces == (
        "team-a",
        "team-b",
    )
