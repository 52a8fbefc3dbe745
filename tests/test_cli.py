"""The ``msds`` dispatcher: one registry, every entry runnable, bad input one line and exit code 2."""

from __future__ import annotations

import importlib

import pytest

from msds_lightning.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_registered_command_resolves_to_a_main(name):
    module, _, function = COMMANDS[name][0].partition(":")
    assert callable(getattr(importlib.import_module(f"msds_lightning.cli.{module}"), function))


def test_unknown_command_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2 and "invalid choice: 'no-such-command'" in capsys.readouterr().err
    # a library ValueError/OSError becomes one line naming the command, not a traceback
    assert main(["analyze", str(tmp_path / "missing.tsv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("msds analyze: error: ") and "missing.tsv" in err and "Traceback" not in err
