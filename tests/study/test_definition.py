from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bitalloc.study.definition import StudyDefinitionError, load_definition, parse_definition
from tests.study.conftest import TINY


def _doc(**space) -> dict:
    doc = tomllib.loads(TINY.format(n_trials=2, storage="", name="tiny"))
    doc["space"].update(space)
    return doc


def test_tiny_definition_parses(tiny_definition: Path) -> None:
    d = load_definition(tiny_definition)
    assert {dim.name for dim in d.space} == {"bits", "pins", "budget_bpw"}
    assert d.fixed["kinds"] == ("rtn",) and d.fixed["group_sizes"] == (64,)
    assert d.fixed["calibration_windows"] == 2 and d.pins["edges8"].layers == (0, -1)
    assert d.storage_url == f"sqlite:///{tiny_definition.parent / 'tiny' / 'study.db'}"


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(StudyDefinitionError, match=r"space\.group_size: unknown parameter.*group_sizes"):
        parse_definition(_doc(group_size=[32, 64]), Path("x.toml"))


def test_unknown_study_key_is_named() -> None:
    doc = _doc()
    doc["study"]["trials"] = 3
    with pytest.raises(StudyDefinitionError, match=r"study\.trials: unknown key"):
        parse_definition(doc, Path("x.toml"))


def test_empty_choices_are_named() -> None:
    with pytest.raises(StudyDefinitionError, match=r"space\.bits: empty list of choices"):
        parse_definition(_doc(bits=[]), Path("x.toml"))
    with pytest.raises(StudyDefinitionError, match=r"space\.budget_bpw: empty range"):
        parse_definition(_doc(budget_bpw={"low": 4.0, "high": 3.0}), Path("x.toml"))


def test_empty_space_is_refused() -> None:
    with pytest.raises(StudyDefinitionError, match=r"space: empty search space"):
        parse_definition(_doc(bits=[3, 4], pins="none", budget_bpw=4.0), Path("x.toml"))


def test_unknown_pin_rule_and_objective_are_named() -> None:
    with pytest.raises(StudyDefinitionError, match=r"space\.pins: no rule \[pins\.ends\]"):
        parse_definition(_doc(pins=["none", "ends"]), Path("x.toml"))
    doc = _doc()
    doc["study"]["objectives"] = ["perplexity", "size"]
    with pytest.raises(StudyDefinitionError, match=r"study\.objectives: unknown objective 'size'"):
        parse_definition(doc, Path("x.toml"))


def test_missing_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StudyDefinitionError, match=r"studies/NAME\.toml"):
        load_definition(tmp_path / "nope.toml")


def test_bad_counts_are_named() -> None:
    doc = _doc()
    doc["study"]["n_trials"] = 0
    with pytest.raises(StudyDefinitionError, match=r"study\.n_trials: must be a positive whole number"):
        parse_definition(doc, Path("x.toml"))
    doc = _doc()
    doc["evaluation"]["max_tokens"] = "4096"
    with pytest.raises(StudyDefinitionError, match=r"evaluation\.max_tokens: must be a positive"):
        parse_definition(doc, Path("x.toml"))
