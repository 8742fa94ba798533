"""``bitalloc export`` refuses bad requests before loading anything and writes nothing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bitalloc.cli import app
from bitalloc.export.cli_export import run_export
from bitalloc.export.common import ExportError


def test_unknown_format_and_full_folder(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    with pytest.raises(ExportError, match="choose one of"):
        run_export(plan, "onnx", tmp_path / "out", model="smollm2-135m", template=None, progress=None)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("x")
    with pytest.raises(ExportError, match="not empty"):
        run_export(plan, "gguf", full, model="smollm2-135m", template=None, progress=None)
    assert [p.name for p in full.iterdir()] == ["keep"] and not (tmp_path / "out").exists()


def test_command_is_registered():
    result = CliRunner().invoke(app, ["export", "--help"])
    assert result.exit_code == 0 and "gptq-dynamic" in result.output
