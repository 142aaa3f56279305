"""`kubetune` finds the local cluster's commands as entry points, and says what to install when it is absent
(as in the operator image, which ships without kubetune_sandbox)."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import pytest

from kubetune.cli.main import COMMAND_PLUGINS, build_parser


def test_the_sandbox_commands_are_registered_entry_points() -> None:
    plugins = {plugin.name: plugin.value for plugin in entry_points(group=COMMAND_PLUGINS)}
    assert set(plugins) == {"emulator", "sandbox", "quickstart"}
    assert all(value.startswith("kubetune_sandbox.cli.") for value in plugins.values())
    args = build_parser().parse_args(["quickstart", "--skip-serving"])
    assert args.skip_serving is True


def test_a_command_whose_package_is_missing_says_what_to_install(capsys: pytest.CaptureFixture[str]) -> None:
    missing = EntryPoint(
        name="quickstart", value="kubetune_sandbox_absent.cli:register", group=COMMAND_PLUGINS
    )
    args = build_parser([missing]).parse_args(["quickstart", "--dir", "x"])
    assert args.run(args) == 2
    error = capsys.readouterr().err
    assert "kubetune_sandbox_absent package, which is not installed" in error
    assert "kubetune[sandbox]" in error
