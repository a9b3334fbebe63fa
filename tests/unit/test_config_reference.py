"""docs/configuration.md is generated from the fields' own docs and must say what they say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mmpretrain import cli
from mmpretrain.config import TrainConfig
from mmpretrain.jobs.spec import RuntimeEnvSection
from mmpretrain.sweep.spec import SchedulerSection

PAGE = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_the_committed_reference_is_what_the_field_docs_generate() -> None:
    assert PAGE.read_text() == cli.reference_text(), "run `mmpretrain config docs`"
    assert cli.main(["config", "docs", "--out", str(PAGE), "--check"]) == 0


@pytest.mark.parametrize(
    ("cls", "name"),
    [(TrainConfig, "max_steps"), (SchedulerSection, "grace_period"), (RuntimeEnvSection, "pip")],
)
def test_a_changed_field_doc_makes_the_check_fail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cls: type, name: str
) -> None:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    monkeypatch.setattr(field, "metadata", {"doc": "A doc the page does not have yet."})
    assert "A doc the page does not have yet." in cli.reference_text()
    assert cli.main(["config", "docs", "--out", str(PAGE), "--check"]) == 1
    assert "is not current; run `mmpretrain config docs`" in capsys.readouterr().err


def test_docs_writes_the_page_or_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reference.md"
    assert cli.main(["config", "docs", "--out", str(out)]) == 0
    assert out.read_text() == PAGE.read_text()
    capsys.readouterr()
    assert cli.main(["config", "docs", "--out", "-"]) == 0
    printed = capsys.readouterr().out
    assert printed == PAGE.read_text()
    for key in ("`train.max_steps`", "`scheduler.grace_period`", "`runtime_env.working_dir`"):
        assert key in printed
