"""What a short command imports: ``scribe down`` must not load numpy, PyAV, NATS or the model runtime.

Each of them costs tenths of a second to seconds of import on a busy machine, and ``scribe down``
is measured against a 3 s budget (issue 12). Every check runs in a fresh interpreter, since this
test process has imported all of them already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scribe_cli.main import CORE_COMMANDS, MODULE_COMMANDS, build_parser

#: Modules no light command may import (each is heavy, or pulls in aiohttp).
HEAVY = ("numpy", "av", "nats", "aiohttp", "faster_whisper", "ctranslate2", "torch")


def _imported_after(code: str, env_home: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the :data:`HEAVY` modules it left in ``sys.modules``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SCRIBE_HOME": env_home, "SCRIBE_API_KEY": ""})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_module(tmp_path):
    assert _imported_after("import scribe_cli.main", str(tmp_path)) == []


@pytest.mark.parametrize("argv", [["down"], ["status"], ["keys", "list", "--file", "none.json"]])
def test_scribe_down_and_other_light_commands_load_no_heavy_module(tmp_path, argv):
    # No stack under this SCRIBE_HOME: `down` and `status` read the state file and return.
    code = f"from scribe_cli.main import main\nmain({argv!r})"
    assert _imported_after(code, str(tmp_path)) == []


def test_the_shared_error_module_imports_nats_only_when_asked(tmp_path):
    # scribe_libs.errors is imported by bench, bulk and export; nats-py costs 0.7 s of it.
    assert _imported_after("import scribe_libs.errors, scribe_libs.formats", str(tmp_path)) == []
    code = "from scribe_libs.errors import broker_outage_errors\nassert len(broker_outage_errors()) == 10"
    assert "nats" in _imported_after(code, str(tmp_path))


def _choices(parser) -> set[str]:  # noqa: ANN001 - an ArgumentParser
    return set(parser._subparsers._group_actions[0].choices)


def test_the_full_parser_has_every_command_and_each_command_its_own():
    # CORE_COMMANDS and MODULE_COMMANDS must name every command: main() picks the parser by them.
    assert _choices(build_parser()) == set(CORE_COMMANDS) | set(MODULE_COMMANDS)
    for command in (*CORE_COMMANDS, *MODULE_COMMANDS):
        assert command in _choices(build_parser(command))
    assert "transcribe" not in _choices(build_parser("down"))
    assert "stream" not in _choices(build_parser("down"))


def test_unknown_commands_and_help_still_list_every_command(capsys):
    with pytest.raises(SystemExit):
        from scribe_cli.main import main

        main(["dwon"])
    err = capsys.readouterr().err
    assert "invalid choice: 'dwon'" in err
    assert all(f"'{c}'" in err for c in (*CORE_COMMANDS, *MODULE_COMMANDS))
