"""Runs Kopf only while this replica holds the Lease (see reconcile/leader.py for why a Lease, not Kopf's
peering). A standby waits, answering its liveness probe; a leader that cannot renew stops Kopf and exits
non-zero (the pod restarts as a standby); a leader stopped cleanly releases the Lease so a standby takes
over at once instead of after the lease duration."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

import kopf
from aiohttp import web

from kubetune.adapters.kube import KubeClient
from kubetune.adapters.lease import LeadershipLostError, LeaseElector
from kubetune.adapters.metrics import LEADER, serve_metrics
from kubetune.handlers.runtime import RUNTIME
from kubetune.handlers.startup import discover_credentials

logger = logging.getLogger(__name__)

EXIT_LEADERSHIP_LOST = 3


async def _standby_probe(port: int) -> web.AppRunner:
    """/healthz answers 200 while standing by: a standby is healthy, just not leading (Kopf serves the
    probe, with its own checks, once this replica leads)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"leader": False, "status": "standing by"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner


async def run_operator(*, namespaces: Sequence[str], health_port: int) -> int:
    """The operator's whole life in this process; the exit code."""
    liveness = f"http://0.0.0.0:{health_port}/healthz" if health_port else None
    election = RUNTIME.config.leader_election
    if RUNTIME.config.metrics_port:
        serve_metrics(RUNTIME.config.metrics_port)
    if election is None:
        LEADER.set(1)
        await _kopf(namespaces, liveness)
        return 0

    LEADER.set(0)
    if (
        discover_credentials(settings=kopf.OperatorSettings(), logger=logger) is None
        or RUNTIME.credentials is None
    ):
        logger.error(
            "leader election: no Kubernetes credentials (neither a service account nor a kubeconfig)"
        )
        return 1
    timing = election.timing
    # Every request must finish within the renew deadline, and renewals never queue behind reconciles.
    client = KubeClient(RUNTIME.credentials, timeout_seconds=timing.renew_deadline_seconds, qps=5, burst=10)
    elector = LeaseElector(
        client,
        name=election.lease_name,
        namespace=election.namespace,
        identity=election.identity,
        timing=timing,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):  # Kopf installs its own once it runs
        loop.add_signal_handler(signum, stop.set)
    probe = await _standby_probe(health_port) if health_port else None
    try:
        logger.info(
            "leader election: %s wants the lease %s/%s",
            election.identity,
            election.namespace,
            election.lease_name,
        )
        acquiring = asyncio.create_task(elector.acquire())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not acquiring.done():  # stopped while standing by: nothing to hand over
            acquiring.cancel()
            await asyncio.gather(acquiring, return_exceptions=True)
            return 0
        acquiring.result()  # a 403 (no RBAC for leases) ends here, with its message
        logger.info("leader election: %s leads", election.identity)
        if probe is not None:
            await probe.cleanup()  # frees the port for Kopf's probe
            probe = None
        LEADER.set(1)
        return await _lead(elector, namespaces, liveness)
    finally:
        LEADER.set(0)
        if probe is not None:
            await probe.cleanup()
        await client.close()


async def _lead(elector: LeaseElector, namespaces: Sequence[str], liveness: str | None) -> int:
    running = asyncio.create_task(_kopf(namespaces, liveness))
    keeping = asyncio.create_task(elector.keep())
    await asyncio.wait({running, keeping}, return_when=asyncio.FIRST_COMPLETED)
    if keeping.done():
        error = keeping.exception()
        logger.error("leader election: %s: stopping the operator", error)
        # Cancelled, not stop-flagged: Kopf then stops its handlers at once. Bounded, since another
        # replica may lead once the lease expires, duration - renew deadline from now.
        running.cancel()
        grace = elector.timing.duration_seconds - elector.timing.renew_deadline_seconds
        done, _ = await asyncio.wait({running}, timeout=grace)
        if not done:
            logger.warning("the operator did not stop within %ss: exiting anyway", grace)
        if not isinstance(error, LeadershipLostError):
            raise error if error is not None else RuntimeError("the lease renewal loop ended")
        return EXIT_LEADERSHIP_LOST
    keeping.cancel()
    await asyncio.gather(keeping, return_exceptions=True)
    await elector.release()  # Kopf stopped (SIGTERM): the standby need not wait out the lease
    running.result()  # Kopf's own failure, if it failed, after the hand-over
    return 0


async def _kopf(namespaces: Sequence[str], liveness: str | None) -> None:
    # No stop_flag: Kopf leaves its waiter on a stop flag running after a SIGTERM and then waits 5 s for
    # it as a "hung task", which would delay every hand-over by 5 s.
    await kopf.operator(
        standalone=True,  # no Kopf peering: the Lease decides who runs
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
    )
