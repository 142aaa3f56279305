"""`kubetune emulator --dir DIR`: a local Kubernetes API with kubetune's CRDs and admission rules, for kubectl."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "emulator", help="serve a local Kubernetes API with the CRDs installed (no operator)"
    )
    parser.add_argument("--dir", required=True, help="where to write the kubeconfig")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kubetune.api.crd import all_crds
    from kubetune_sandbox.emulator.server import EmulatorServer

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server = EmulatorServer(crds=all_crds(), port=args.port)
        server.start()
    except (OSError, RuntimeError) as error:
        print(f"kubetune emulator: cannot start: {error} (is port {args.port} in use?)", file=sys.stderr)
        return 1
    try:
        kubeconfig = server.kubeconfig(directory / "kubeconfig")
        print(f"Kubernetes API emulator at {server.url} with the kubetune CRDs installed.")
        print(f"  export KUBECONFIG={kubeconfig}")
        print("  kubectl apply -f examples/01-lora-basic/finetunejob.yaml && kubectl get ftj")
        print("Ctrl-C stops it.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    finally:
        server.stop()
    return 0
