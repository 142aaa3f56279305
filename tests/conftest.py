"""Suite-wide set-up: the tests run the tools the lock installed into .venv (kubectl among them), not
whatever else a machine has on PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
