"""The `kubetune` command (also installed as the kubectl plugin `kubectl kubetune`)."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from kubetune.api.manifests import crd_files
from kubetune.api.reference import api_reference
from kubetune.cli import user

# Commands other packages add (kubetune_sandbox: emulator, sandbox, quickstart), one entry point per command.
COMMAND_PLUGINS = "kubetune.commands"


def _crds(args: argparse.Namespace) -> int:
    files = crd_files()
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
            print(f"wrote {out / name}")
    else:
        sys.stdout.write("---\n".join(files.values()))
    return 0


def _api_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(api_reference())
    return 0


def _operator(args: argparse.Namespace) -> int:
    """Runs the operator in this process (what the operator image does)."""
    import asyncio

    import kopf

    import kubetune.handlers.all  # noqa: F401  (registers the handlers)
    from kubetune.handlers.leadership import run_operator
    from kubetune.handlers.runtime import RUNTIME

    kopf.configure(
        log_format=kopf.LogFormat.JSON if args.json_logs else kopf.LogFormat.PLAIN, verbose=args.verbose
    )
    # Waits for the Lease first where leader election is on (KUBETUNE_LEADER_ELECTION, POD_NAMESPACE).
    return asyncio.run(run_operator(namespaces=RUNTIME.config.namespaces, health_port=args.health_port))


def _register_missing(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    plugin: EntryPoint,
    error: ModuleNotFoundError,
) -> None:
    """A command whose package is not installed: it says which one, instead of argparse's "invalid choice"."""
    package = plugin.value.split(".", 1)[0]
    # No option prefix, so that every argument (`--dir x`, `-h`) lands in `ignored` instead of an error.
    parser = commands.add_parser(
        plugin.name, help=f"(needs {package}, not installed)", add_help=False, prefix_chars="\0"
    )
    parser.add_argument("ignored", nargs="*")

    def refuse(args: argparse.Namespace) -> int:
        print(
            f"kubetune {plugin.name}: this command comes from the {package} package, which is not installed "
            f"here ({error}). It is the local cluster for development: install kubetune[sandbox] from a "
            "checkout (scripts/setup.sh does). The operator image does not ship it.",
            file=sys.stderr,
        )
        return 2

    parser.set_defaults(run=refuse)


def register_plugins(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], plugins: list[EntryPoint] | None = None
) -> None:
    for plugin in sorted(
        entry_points(group=COMMAND_PLUGINS) if plugins is None else plugins, key=lambda p: p.name
    ):
        try:
            register = plugin.load()
        except ModuleNotFoundError as error:
            _register_missing(commands, plugin, error)
            continue
        register(commands)


def build_parser(plugins: list[EntryPoint] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description="Fine-tune and serve LLMs on Kubernetes.")
    commands = parser.add_subparsers(dest="command", required=True)
    crds = commands.add_parser("crds", help="print the CustomResourceDefinitions (or write them to a folder)")
    crds.add_argument("--output-dir", "-o", help="write one file per CRD into this folder")
    crds.set_defaults(run=_crds)
    reference = commands.add_parser("api-reference", help="print the API reference (docs/api.md) as Markdown")
    reference.set_defaults(run=_api_reference)
    operator = commands.add_parser("operator", help="run the operator (configured by KUBETUNE_* variables)")
    operator.add_argument(
        "--health-port", type=int, default=8081, help="liveness endpoint port; 0 disables it"
    )
    operator.add_argument("--json-logs", action=argparse.BooleanOptionalAction, default=True)
    operator.add_argument("--verbose", action="store_true")
    operator.set_defaults(run=_operator)
    register_plugins(commands, plugins)
    user.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
