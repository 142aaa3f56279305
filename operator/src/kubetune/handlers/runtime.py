"""Process-wide state of the running operator: its configuration, API client, metric indexes and the
background tasks (child watches) that stop before the client closes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kubetune.adapters.kube import Credentials, KubeClient
from kubetune.adapters.metrics import PhaseIndex
from kubetune.handlers.settings import OperatorConfig


@dataclass
class Runtime:
    config: OperatorConfig = field(default_factory=OperatorConfig.from_env)
    credentials: Credentials | None = None
    phases: PhaseIndex = field(default_factory=PhaseIndex)
    background: set[asyncio.Task[None]] = field(default_factory=set)
    _client: KubeClient | None = None

    def client(self) -> KubeClient:
        if self._client is None:
            if self.credentials is None:
                raise RuntimeError("no Kubernetes credentials yet: the login handler has not run")
            self._client = KubeClient(self.credentials, qps=self.config.api_qps, burst=self.config.api_burst)
        return self._client

    def unauthorized_streak(self) -> int:
        """Consecutive 401s of the operator's client (0 before it exists)."""
        return self._client.unauthorized_streak if self._client is not None else 0

    async def close(self) -> None:
        tasks = list(self.background)  # cleared in place: Wakeups holds this very set
        self.background.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # a watch that died was logged when it did
        if self._client is not None:
            await self._client.close()
            self._client = None


RUNTIME = Runtime()
