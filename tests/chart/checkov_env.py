"""checkov in its own virtualenv, built once from checkov-requirements.txt and cached.

checkov pins versions the project cannot take (boto3, packaging, networkx), so it never enters .venv. The
environment lives under $KUBETUNE_CACHE_DIR (default ~/.cache/kubetune), keyed by the requirements' hash, and
is rebuilt only when they change. Build it ahead of the tests with:

    .venv/bin/python -m tests.chart.checkov_env
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "checkov-requirements.txt"


def cache_root() -> Path:
    explicit = os.environ.get("KUBETUNE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubetune"


def environment() -> Path:
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + sys.version.encode()).hexdigest()[:12]
    return cache_root() / f"checkov-{key}"


def ensure() -> Path:
    """checkov's virtualenv, built first if needed (about 25 s, PyPI needed)."""
    venv = environment()
    if (venv / ".complete").exists():
        return venv
    staging = venv.with_name(f"{venv.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(staging)], check=True)
    pip = [str(staging / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # Exact pins of the whole closure: no resolver run, nothing newer sneaks in.
    subprocess.run([*pip, "--no-deps", "-r", str(REQUIREMENTS)], check=True)
    (staging / ".complete").write_text(REQUIREMENTS.read_text())
    try:
        staging.rename(venv)
    except OSError:  # another process finished first: use theirs
        shutil.rmtree(staging, ignore_errors=True)
    return venv


def command() -> list[str]:
    """How to run checkov. Scripts in a renamed virtualenv keep the old path in their shebang, so it runs
    through the environment's interpreter."""
    return [str(ensure() / "bin" / "python"), "-m", "checkov.main"]


if __name__ == "__main__":
    print(" ".join(command()))
