"""The typed recipe loader: every shipped recipe loads, and mistakes name the key and its place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from lmforge.config import ConfigError, apply_overrides, build, load_yaml_with_marks
from lmforge.recipe import Recipe, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)
    name: str | None = None


@dataclass
class Outer:
    train: Inner = field(default_factory=Inner)
    flag: bool = False


def _write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.model.vocab_size > 0


def test_types_are_converted_and_checked(tmp_path):
    raw, marks = load_yaml_with_marks(_write(tmp_path, "train:\n  lr: 3e-4\n  steps: 1e3\n  tags: [x, y]\nflag: true\n"))
    cfg = build(Outer, raw, marks)
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)  # YAML reads 3e-4 as a string
    assert cfg.train.steps == 1000 and isinstance(cfg.train.steps, int)
    assert cfg.train.tags == ["x", "y"] and cfg.flag is True


def test_unknown_key_names_file_line_and_valid_keys(tmp_path):
    path = _write(tmp_path, "flag: false\ntrain:\n  lrr: 0.1\n")
    raw, marks = load_yaml_with_marks(path)
    with pytest.raises(ConfigError) as info:
        build(Outer, raw, marks)
    msg = str(info.value)
    assert f"{path}:3" in msg and "'train.lrr'" in msg and "did you mean 'lr'" in msg
    assert "lr, mode, name, steps, tags" in msg


def test_wrong_type_names_key_and_expected_type(tmp_path):
    path = _write(tmp_path, "train:\n  steps: many\n")
    raw, marks = load_yaml_with_marks(path)
    with pytest.raises(ConfigError, match=rf"{path}:2: 'train.steps' must be int; got 'many'"):
        build(Outer, raw, marks)


def test_literal_choices_are_listed(tmp_path):
    raw, marks = load_yaml_with_marks(_write(tmp_path, "train:\n  mode: c\n"))
    with pytest.raises(ConfigError, match=r"'train.mode' must be one of 'a', 'b'; got 'c'"):
        build(Outer, raw, marks)


def test_overrides_parse_yaml_values_and_are_checked():
    raw, marks = {}, {}
    apply_overrides(raw, ["train.lr=0.5", "train.tags=[a, b]", "flag=true", "train.name=null"], marks)
    cfg = build(Outer, raw, marks)
    assert cfg.train.lr == 0.5 and cfg.train.tags == ["a", "b"] and cfg.flag and cfg.train.name is None
    raw, marks = {}, {}
    apply_overrides(raw, ["train.stepz=3"], marks)
    with pytest.raises(ConfigError, match=r"--set train.stepz=3: unknown key 'train.stepz'; did you mean 'steps'"):
        build(Outer, raw, marks)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.lr"], {})
    raw, marks = {}, {}
    apply_overrides(raw, ["trian.lr=1"], marks)
    with pytest.raises(ConfigError, match=r"--set trian.lr=1: unknown key 'trian'; did you mean 'train'"):
        build(Outer, raw, marks)


def test_override_into_an_empty_yaml_section(tmp_path):
    raw, marks = load_yaml_with_marks(_write(tmp_path, "train:\n"))
    apply_overrides(raw, ["train.steps=3"], marks)
    assert build(Outer, raw, marks).train.steps == 3


def test_section_check_tripped_by_an_override_names_it():
    from lmforge.recipe import load_recipe

    with pytest.raises(ConfigError, match=r"section 'model' \(with --set model.d_model=63\): d_model=63 is not divisible"):
        load_recipe(None, ["model.d_model=63"])


def test_base_recipes_merge_and_cycles_are_caught(tmp_path):
    _write(tmp_path, "train:\n  lr: 0.1\n  steps: 5\n", "base.yaml")
    child = _write(tmp_path, "base: base.yaml\ntrain:\n  steps: 7\n", "child.yaml")
    raw, marks = load_yaml_with_marks(child)
    cfg = build(Outer, raw, marks)
    assert (cfg.train.lr, cfg.train.steps) == (0.1, 7)
    _write(tmp_path, "base: b.yaml\n", "a.yaml")
    _write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml_with_marks(tmp_path / "a.yaml")


def test_recipe_section_validation_reaches_model_config(tmp_path):
    path = _write(tmp_path, "model:\n  d_model: 100\n  n_heads: 3\n")
    with pytest.raises(ConfigError, match=r"section 'model': d_model=100 is not divisible by n_heads=3"):
        load_recipe(path)


def test_cli_reports_config_errors_cleanly(tmp_path):
    import subprocess
    import sys

    path = _write(tmp_path, "train:\n  lrr: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "model", "info", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "unknown key 'train.lrr'" in proc.stderr and "Traceback" not in proc.stderr
    assert f"{path}:2" in proc.stderr
