"""Reads a trainer pod's Prometheus endpoint: the live half of the progress contract."""

from __future__ import annotations

import logging

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kubetune.reconcile.progress import TRAINER_METRICS

logger = logging.getLogger(__name__)


async def scrape_trainer(ip: str, port: int, *, timeout_seconds: float = 3.0) -> dict[str, float] | None:
    """The trainer's kubetune_trainer_* samples, or None when the pod cannot be reached (not fatal)."""
    url = f"http://{ip}:{port}/metrics"
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
            if response.status != 200:
                return None
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        logger.debug("cannot scrape %s: %s", url, error)
        return None
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in TRAINER_METRICS and not sample.labels:
                samples[sample.name] = float(sample.value)
    return samples
