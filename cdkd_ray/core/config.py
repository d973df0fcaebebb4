"""Typed configuration: YAML files and ``key.sub=value`` overrides validated into dataclasses."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from importlib import resources
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from cdkd_ray.core.errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert_union(value: Any, tp: Any, where: str) -> Any:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, where)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")


def _convert_sequence(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if isinstance(value, str) and "x" in value and origin is tuple:  # "256x192"
        value = value.split("x")
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    args = get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    item = args[0] if args else Any
    seq = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(seq) if origin is tuple else seq


def _convert_number(value: Any, tp: type, where: str) -> Any:
    if isinstance(value, str):
        try:
            value = tp(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    raise ConfigError(f"{where}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")


def _convert_scalar(value: Any, tp: Any, where: str) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        return _convert_number(value, tp, where)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """`value` checked and converted to the annotated type `tp`; errors name the key path `where`."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, where)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, get_args(tp)))}")
        return value
    if origin in (list, tuple):
        return _convert_sequence(value, tp, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return _convert_scalar(value, tp, where)


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        kwargs[key] = _convert(value, hints[key], path)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check:
        check(where or cls.__name__)
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain YAML/JSON-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested mapping."""
    data = dict(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            child = dict(child) if isinstance(child, dict) else {}
            node[key] = child
            node = child
        node[keys[-1]] = value
    return data


def preset_names() -> list[str]:
    folder = resources.files("cdkd_ray") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_yaml_mapping(name_or_path: str) -> dict:
    """A YAML mapping from a file path, an s3:// URI, or a named preset shipped in the package."""
    from cdkd_ray.core.storage import is_s3, resolve

    if is_s3(name_or_path) or os.path.exists(name_or_path):
        text = resolve(name_or_path).read_bytes().decode()
        where = name_or_path
    else:
        preset = resources.files("cdkd_ray") / "configs" / f"{name_or_path}.yaml"
        if not preset.is_file():
            raise ConfigError(
                f"config '{name_or_path}' is neither a file nor a preset (presets: {', '.join(preset_names())})")
        text, where = preset.read_text(), f"preset {name_or_path}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    base = data.pop("base", None)
    if base:
        data = _deep_merge(read_yaml_mapping(base), data)
    return data


def read_yaml_documents(path_or_uri: str) -> list[dict]:
    """Every mapping in a (multi-document) YAML file, e.g. Kubernetes manifests."""
    from cdkd_ray.core.storage import resolve

    try:
        docs = list(yaml.safe_load_all(resolve(path_or_uri).read_bytes().decode()))
    except FileNotFoundError:
        raise ConfigError(f"{path_or_uri}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path_or_uri}: invalid YAML: {exc}") from None
    docs = [d for d in docs if isinstance(d, dict)]
    if not docs:
        raise ConfigError(f"{path_or_uri}: no YAML mapping in it")
    return docs


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(cls: type[T], name_or_path: str | None, overrides: typing.Sequence[str] = ()) -> T:
    """Load ``cls`` from a preset/file (or defaults) plus overrides."""
    data = read_yaml_mapping(name_or_path) if name_or_path else {}
    return from_dict(cls, apply_overrides(data, list(overrides)))
