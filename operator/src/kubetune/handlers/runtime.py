"""Process-wide state of the running operator: its configuration, API client and metric indexes."""

from __future__ import annotations

from dataclasses import dataclass, field

from kubetune.adapters.kube import Credentials, KubeClient
from kubetune.adapters.metrics import PhaseIndex
from kubetune.handlers.settings import OperatorConfig


@dataclass
class Runtime:
    config: OperatorConfig = field(default_factory=OperatorConfig.from_env)
    credentials: Credentials | None = None
    phases: PhaseIndex = field(default_factory=PhaseIndex)
    _client: KubeClient | None = None

    def client(self) -> KubeClient:
        if self._client is None:
            if self.credentials is None:
                raise RuntimeError("no Kubernetes credentials yet: the login handler has not run")
            self._client = KubeClient(self.credentials)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


RUNTIME = Runtime()
