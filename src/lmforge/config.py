"""Typed configuration: YAML recipes and dotted command-line overrides into dataclasses.

Every component declares its own settings as a dataclass (``ModelConfig``, ``TrainConfig``, ...)
and receives only that section. This module turns raw YAML into those dataclasses, checking
every key and every value's type, and reports mistakes with the place they came from::

    recipes/demo.yaml:14: unknown key 'train.lrr'; did you mean 'lr'?
        valid keys in 'train': batch_size, grad_accum, lr, ...

Usage::

    from lmforge.config import load_yaml_with_marks, apply_overrides, build
    raw, marks = load_yaml_with_marks("recipes/demo.yaml")   # follows `base:` recipes
    apply_overrides(raw, ["train.lr=3e-4"], marks)
    recipe = build(Recipe, raw, marks)

A recipe may start with ``base: other.yaml`` (relative to itself); its keys are deep-merged over
the base's, which is how the tiny CI variant of the demo is written.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A recipe or override is wrong; the message names the key and where it came from."""


# marks: dotted key path -> "file:line" (or "--set" for overrides). Used only for messages.
Marks = dict[str, str]


def load_yaml_with_marks(path: str | Path, _seen: tuple[Path, ...] = ()) -> tuple[dict, Marks]:
    """Read a YAML recipe into a dict and remember the file:line of every key.

    A top-level ``base: other.yaml`` is loaded first and this file is merged over it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"{path}: 'base' recipes form a cycle: {' -> '.join(map(str, _seen + (resolved,)))}")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        data, node = {}, None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    marks: Marks = {}
    if node is not None:
        _collect_marks(node, "", str(path), marks)
    base = data.pop("base", None)
    if base is None:
        return data, marks
    base_raw, base_marks = load_yaml_with_marks(path.parent / base, _seen + (resolved,))
    base_marks.update(marks)
    return deep_merge(base_raw, data), base_marks


def _collect_marks(node: yaml.Node, prefix: str, filename: str, marks: Marks) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            marks[key] = f"{filename}:{key_node.start_mark.line + 1}"
            _collect_marks(value_node, key + ".", filename, marks)
    elif isinstance(node, yaml.SequenceNode) and prefix:
        # List items are marked as `key[i]`, the form _convert reports their paths in.
        for i, item_node in enumerate(node.value):
            key = f"{prefix[:-1]}[{i}]"
            marks[key] = f"{filename}:{item_node.start_mark.line + 1}"
            _collect_marks(item_node, key + ".", filename, marks)


def deep_merge(base: dict, over: dict) -> dict:
    """Return ``base`` updated by ``over``, merging nested mappings key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(raw: dict, overrides: list[str] | None, marks: Marks | None = None) -> dict:
    """Apply ``section.key=value`` overrides in place; values are parsed as YAML scalars/lists."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
        key, _, text = item.partition("=")
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        target = raw
        for depth, part in enumerate(parts[:-1]):
            child = target.get(part)
            if child is None:  # absent, or an empty `section:` line in the YAML
                child = target[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {key}: '{where}' is a value, not a section")
            target = child
        target[parts[-1]] = value
        if marks is not None:
            for depth in range(1, len(parts)):  # a section only the override created is its place too
                marks.setdefault(".".join(parts[:depth]), f"--set {item}")
            marks[key] = f"--set {item}"
    return raw


def build(cls: type, raw: Any, marks: Marks | None = None, path: str = "") -> Any:
    """Validate ``raw`` against dataclass ``cls`` (recursively) and return an instance."""
    return _convert(cls, raw, marks or {}, path)


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict of YAML-friendly values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _where(path: str, marks: Marks) -> str:
    # The closest marked ancestor tells the user which file and line to look at.
    probe = path
    while probe:
        if probe in marks:
            return marks[probe]
        # Up one level: `a.b[2].c` -> `a.b[2]` -> `a.b` -> `a`.
        probe = probe[: probe.rindex("[")] if probe.endswith("]") else probe.rpartition(".")[0]
    return "recipe"


def _convert(tp: Any, value: Any, marks: Marks, path: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, marks, path)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, marks, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise errors[0] if len(errors) == 1 else _type_error(tp, value, marks, path)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{_where(path, marks)}: '{path}' must be one of {', '.join(map(repr, choices))}; got {value!r}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(tp, value, marks, path)
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(item_tp, v, marks, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(tp, value, marks, path)
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {str(k): _convert(val_tp, v, marks, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(tp, value, marks, path)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):  # YAML 1.1 reads 1e6 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise _type_error(tp, value, marks, path) from None
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 1.0e6 in YAML is a float; accept it where an int is meant
        raise _type_error(tp, value, marks, path)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(tp, value, marks, path)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _type_error(tp, value, marks, path)
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _type_error(tp, value, marks, path)
    raise ConfigError(f"{_where(path, marks)}: '{path}' has an unsupported type {tp!r}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None)) + " (or null)"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _type_error(tp: Any, value: Any, marks: Marks, path: str) -> ConfigError:
    return ConfigError(
        f"{_where(path, marks)}: '{path}' must be {_type_name(tp)}; got {value!r} ({type(value).__name__})"
    )


def _build_dataclass(cls: type, value: Any, marks: Marks, path: str) -> Any:
    if value is None:
        value = {}
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f"{_where(path, marks)}: '{path or 'recipe'}' must be a section (mapping); got {value!r}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in value:
        if key not in fields:
            full = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{_where(full, marks)}: unknown key '{full}'{hint}\n"
                f"    valid keys in '{path or 'recipe'}': {', '.join(sorted(fields))}"
            )
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            full = f"{path}.{name}" if path else name
            kwargs[name] = _convert(hints[name], value[name], marks, full)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        # A section's own checks (e.g. d_model divisible by n_heads) may be tripped by an override.
        prefix = f"{path}." if path else ""
        overrides = sorted({m for k, m in marks.items() if k.startswith(prefix) and m.startswith("--set ")})
        after = f" (with {', '.join(overrides)})" if overrides else ""
        raise ConfigError(f"{_where(path, marks)}: section '{path or 'recipe'}'{after}: {exc}") from None
    return obj
