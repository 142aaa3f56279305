"""`kubetune-trainer bench`: N streamed chat requests at concurrency C against an OpenAI-compatible endpoint.

Measures what a user feels: time to first token, whole-request latency (p50/p95), output tokens per second
across the run, and the error rate. Standard library only, so it runs in any image without extra packages.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

PROMPTS = (
    "What is 12 + 7?",
    "What is the capital of France?",
    "Say hello in one short sentence.",
    "What is 40 - 13?",
    "Name the capital of Japan.",
)


@dataclass(frozen=True)
class RequestResult:
    ok: bool
    latency_seconds: float
    ttft_seconds: float | None
    output_tokens: int
    error: str = ""


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `fraction` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def one_request(endpoint: str, model: str, prompt: str, max_tokens: int, timeout: float) -> RequestResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = urllib.request.Request(
        endpoint.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    started = time.perf_counter()
    first: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            for raw in response:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    break
                event = json.loads(payload)
                if event.get("usage") and event["usage"].get("completion_tokens") is not None:
                    usage_tokens = int(event["usage"]["completion_tokens"])
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter() - started
    except (urllib.error.URLError, OSError, ValueError) as error:
        return RequestResult(
            False, time.perf_counter() - started, first, 0, f"{type(error).__name__}: {error}"
        )
    return RequestResult(
        True, time.perf_counter() - started, first, usage_tokens if usage_tokens is not None else chunks
    )


def summarize(results: list[RequestResult], wall_seconds: float, concurrency: int) -> dict[str, Any]:
    done = [r for r in results if r.ok]
    summary: dict[str, Any] = {
        "requests": len(results),
        "concurrency": concurrency,
        "errorRate": f"{(len(results) - len(done)) / max(len(results), 1):.4g}",
    }
    if done:
        latencies = [r.latency_seconds for r in done]
        ttfts = [r.ttft_seconds for r in done if r.ttft_seconds is not None]
        summary["p50LatencySeconds"] = f"{statistics.median(latencies):.4g}"
        summary["p95LatencySeconds"] = f"{percentile(latencies, 0.95):.4g}"
        if ttfts:
            summary["ttftSeconds"] = f"{statistics.median(ttfts):.4g}"
        summary["outputTokensPerSecond"] = (
            f"{sum(r.output_tokens for r in done) / max(wall_seconds, 1e-9):.4g}"
        )
    return summary


def run_benchmark(
    endpoint: str,
    model: str,
    *,
    requests: int,
    concurrency: int,
    max_tokens: int = 32,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """The termination-message summary: {"stage": "bench", "ok", "benchmark": {...}}."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda p: one_request(endpoint, model, p, max_tokens, timeout), prompts))
    benchmark = summarize(results, time.perf_counter() - started, concurrency)
    errors = sorted({r.error for r in results if not r.ok})
    ok = any(result.ok for result in results)
    summary: dict[str, Any] = {"stage": "bench", "ok": ok, "benchmark": benchmark}
    if errors:
        summary["warnings"] = errors[:5]
    if not ok:
        summary.update(
            reason="EndpointUnavailable", message=f"every request to {endpoint} failed: {errors[0]}"
        )
    return summary
