from __future__ import annotations

import pytest

from statecast.cli import main

pytestmark = pytest.mark.unit


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "stack" in capsys.readouterr().out


def test_stack_status_on_an_empty_dir_reports_down(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stack", "status", "--dir", str(tmp_path), "--kafka-port", "1"]) == 1
    assert "kafka: down" in capsys.readouterr().out
