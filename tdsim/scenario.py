"""Scenario loading: TOML text -> overrides -> validation -> the fully resolved scenario.

A scenario file is checked against `tdsim.schema.SCHEMA` before anything runs.  The result,
`Scenario.data`, has every table present and every default filled in from the schema, so the
model reads plain dicts and never needs a default of its own.  Any problem with the input is a
`ScenarioError` whose text is one line naming the file and the key path
(``baseline.toml: vm[0].pin[1]: CPU 7 does not exist: host.cpus = 4``).

The engine is generic over the schema's node types (`Key`, `Table`, `Map`, `ArrayOfTables`);
rules that relate several keys (pins against ``host.cpus``, a wake source for ``hlt``, the
warm-up against the duration, known invariant names in ``[expect]``) are the functions listed
in `tdsim.scenario_checks.CROSS_CHECKS`.  User strategies are imported and instantiated here,
so a strategy that cannot be used is bad input like any other.

Overrides (``--set KEY=VALUE`` on the command line) use dotted keys; a numeric segment indexes
an array of tables, and the index one past the end appends a new item (``vm.1.vcpus=2`` adds
a second VM).  A value is parsed as a TOML literal and falls back to the plain string; a
key whose type is a string always takes the text as a string (``vm.0.name=5`` names the VM
"5").  Nothing is ever evaluated.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdsim.scenario_checks import CROSS_CHECKS, PathT, resolve_programs, resolve_strategies
from tdsim.scenario_checks import Bad as _Bad
from tdsim.schema import SCHEMA, ArrayOfTables, Key, Map, Table
from tdsim.schema_doc import TYPE_NAMES, toml_text, type_name
from tdsim.schema_doc import describe_schema as _describe_schema

__all__ = ["CROSS_CHECKS", "Scenario", "ScenarioError", "apply_overrides", "describe_schema",
           "format_path", "load_scenario", "load_scenario_text", "parse_override",
           "parse_value", "scenario_from_dict"]
Overrides = list[str] | Mapping[str, Any] | None  # see `apply_overrides`

_MISSING = object()


class ScenarioError(Exception):
    """Bad scenario input; ``str()`` is one line: ``"<file>: <key path>: <message>"``."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.message = " ".join(str(message).splitlines())
        super().__init__(f"{file}: {key}: {self.message}")


@dataclass
class Scenario:
    """A validated scenario: `path` names its source, `data` is the fully resolved dict.

    `data` holds only TOML/JSON types (dict, list, str, int, float, bool) plus ``None`` for
    optional keys left unset, so it can go into a result document as it is.
    """

    path: str
    data: dict[str, Any]

    @property
    def seed(self) -> int:
        """The run seed (``sim.seed``)."""
        seed: int = self.data["sim"]["seed"]
        return seed

    def replace(self, overrides: Overrides = None) -> Scenario:
        """A new scenario: this one's resolved data with `overrides` applied and re-validated."""
        return scenario_from_dict(self.data, name=self.path, overrides=overrides)

    def to_toml_dict(self) -> dict[str, Any]:
        """`data` without the unset (``None``) keys, which TOML cannot express."""
        data: dict[str, Any] = _drop_none(self.data)
        return data


# --- entry points -----------------------------------------------------------------------------


def load_scenario(path: str | os.PathLike[str], overrides: Overrides = None) -> Scenario:
    """Read, override, validate and resolve the scenario file at `path`.

    A relative ``.py`` path in ``kvm.host_state`` is resolved against the file's directory.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ScenarioError(name, "<file>", f"cannot read: {reason}") from None
    return load_scenario_text(text, name=name, overrides=overrides,
                              base_dir=Path(path).resolve().parent)


def load_scenario_text(
    text: str,
    name: str = "<string>",
    overrides: Overrides = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> Scenario:
    """Parse TOML `text` and resolve it like `load_scenario`; `name` is used in errors.

    Relative strategy paths resolve against `base_dir` (default: the current directory).
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(name, "<toml>", str(e)) from None
    return _build(raw, name, overrides, base_dir)


def scenario_from_dict(
    d: Mapping[str, Any],
    name: str = "<dict>",
    overrides: Overrides = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> Scenario:
    """Validate and resolve a scenario given as a dict (as `tomllib` would return it).

    ``None`` is accepted for optional keys and means unset, so ``scenario_from_dict(s.data)``
    gives back an equal scenario.  `d` is not modified.
    """
    if not isinstance(d, Mapping):
        raise ScenarioError(name, "<root>", f"expected a table, got {_describe(d)}")
    return _build(copy.deepcopy(dict(d)), name, overrides, base_dir)


def _build(raw: dict[str, Any], name: str, overrides: Overrides, base_dir: Any) -> Scenario:
    try:
        overridden = apply_overrides(raw, overrides)
        data = _resolve_table(SCHEMA, raw, (), None)
        for check in CROSS_CHECKS:
            check(data)
        # A path given on the command line is typed relative to the shell, not to the file.
        here = Path.cwd() if base_dir is None else base_dir

        def typed_in_shell(key: PathT) -> bool:
            return any(p == key[: len(p)] for p in overridden)

        resolve_strategies(data, Path.cwd() if typed_in_shell(("kvm", "host_state")) else here,
                           Path.cwd() if typed_in_shell(("kvm", "compare")) else here)
        resolve_programs(data, here)
    except _Bad as e:
        raise ScenarioError(name, format_path(e.path), e.message) from None
    return Scenario(path=name, data=data)


# --- overrides --------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A ``--set`` value: the TOML literal it spells (``8``, ``[0, 1]``, ``{io = 1.0}``), or
    else the text itself as a string (``v6.16``)."""
    try:
        doc = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return doc["v"] if list(doc) == ["v"] else text


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``"KEY=VALUE"`` into the dotted key and its parsed value (`parse_value`)."""
    key, text = _split_override(item)
    return key, parse_value(text)


def _split_override(item: str) -> tuple[str, str]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise _Bad(("--set",), f"expected KEY=VALUE, got {item!r}")
    return key, text.strip()


class _Text(str):
    """A ``--set`` value not parsed yet: `_set_dotted` parses it once it knows the key's
    type (a string key takes the text itself)."""


def _override_value(spec: Any, value: Any) -> Any:
    if not isinstance(value, _Text):
        return value
    parsed = parse_value(str(value))
    if isinstance(spec, Key) and spec.type is str and not isinstance(parsed, str):
        return str(value)  # vm.0.name=5 is the name "5"
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: Overrides) -> list[PathT]:
    """Apply `overrides` to the unvalidated dict `raw` in place; return the paths set.

    `overrides` is a list of ``"KEY=VALUE"`` strings (values parsed by `parse_value`, or
    taken as text for a string key) or a mapping from dotted key to an already-typed value.
    """
    if not overrides:
        return []
    pairs: list[tuple[str, Any]]
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    else:
        items = [overrides] if isinstance(overrides, str) else list(overrides)
        pairs = [(k, _Text(t)) for k, t in map(_split_override, items)]
    return [_set_dotted(raw, key, value) for key, value in pairs]


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> PathT:
    """Set one dotted `key` in `raw`, creating tables (and schema-default array items) on the
    way; return the key path that was set."""
    segs = key.split(".")
    if not all(s.strip() for s in segs):
        raise _Bad(("--set",), f"bad key {key!r}")
    node: Any = raw
    spec: Any = SCHEMA
    path: PathT = ()
    n: str | int
    for depth, seg in enumerate(segs):
        last = depth == len(segs) - 1
        if isinstance(node, list):
            if not seg.isdigit():
                raise _Bad(path, f"is an array: index it with a number "
                                 f"({'.'.join(map(str, path))}.0...), not {seg!r}")
            n = int(seg)
            if n > len(node):
                dotted = ".".join(map(str, path))
                raise _Bad(path + (n,), f"index {n} out of range: {format_path(path)} has "
                                        f"{len(node)} item(s); use {dotted}.{len(node)} "
                                        f"to add one")
            spec = spec.item if isinstance(spec, ArrayOfTables) else None
            if n == len(node):
                node.append(_override_value(spec, value) if last else {})
            elif last:
                node[n] = _override_value(spec, value)
        elif isinstance(node, dict):
            spec = spec.keys.get(seg) if isinstance(spec, Table) else None
            if last:
                node[seg] = _override_value(spec, value)
            elif seg not in node:
                items = spec.default_items if isinstance(spec, ArrayOfTables) else 0
                node[seg] = [{} for _ in range(items)] if items else {}
            n = seg
        else:
            raise _Bad(path, f"is not a table, so {key!r} cannot be set")
        path += (n,)
        if not last:
            node = node[n]
    return path


# --- the generic engine -----------------------------------------------------------------------


def format_path(path: PathT) -> str:
    """``("vm", 0, "pin", 2)`` -> ``"vm[0].pin[2]"``."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else seg
    return out or "<root>"


def _resolve_node(spec: Any, value: Any, path: PathT, index: int | None) -> Any:
    if isinstance(spec, Key):
        return _resolve_key(spec, value, path, index)
    if isinstance(spec, Table):
        return _resolve_table(spec, None if value is _MISSING else value, path, index)
    if isinstance(spec, Map):
        return _resolve_map(spec, value, path)
    if isinstance(spec, ArrayOfTables):
        return _resolve_array(spec, value, path)
    raise TypeError(f"schema node at {format_path(path)} has unknown type {type(spec)}")


def _resolve_table(spec: Table, raw: Any, path: PathT, index: int | None) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _Bad(path, f"expected a table, got {_describe(raw)}")
    _reject_unknown(raw, tuple(spec.keys), path)
    return {k: _resolve_node(s, raw.get(k, _MISSING), path + (k,), index)
            for k, s in spec.keys.items()}


def _resolve_map(spec: Map, raw: Any, path: PathT) -> dict[str, Any]:
    if raw is _MISSING or raw is None:
        given = dict(spec.default)
    elif not isinstance(raw, dict):
        raise _Bad(path, f"expected a table, got {_describe(raw)}")
    else:
        if spec.allowed is not None:
            _reject_unknown(raw, spec.allowed, path, list_allowed=True)
        if isinstance(spec.value, Table):
            return {k: _resolve_table(spec.value, v, path + (k,), None) for k, v in raw.items()}
        given = {k: _check_value(spec.value, v, path + (k,)) for k, v in raw.items()}
    if spec.allowed is None:  # free-form keys: only those given
        return given
    assert isinstance(spec.value, Key)  # a Map of tables has free-form keys
    return {k: given.get(k, spec.value.default) for k in spec.allowed}


def _resolve_array(spec: ArrayOfTables, raw: Any, path: PathT) -> list[dict[str, Any]]:
    if raw is _MISSING or raw is None:
        raw = [{} for _ in range(spec.default_items)]
    if not isinstance(raw, list):
        raise _Bad(path, f"expected an array of tables ([[{path[-1]}]]), got {_describe(raw)}")
    if len(raw) < spec.min_items:
        raise _Bad(path, f"needs at least {spec.min_items} item(s), got {len(raw)}")
    return [_resolve_table(spec.item, item, path + (i,), i) for i, item in enumerate(raw)]


def _resolve_key(spec: Key, value: Any, path: PathT, index: int | None) -> Any:
    if value is _MISSING or (value is None and spec.optional):
        if spec.index_default is not None and index is not None:
            return spec.index_default.format(i=index)
        return copy.deepcopy(spec.default)
    return _check_value(spec, value, path)


def _check_value(spec: Key, value: Any, path: PathT) -> Any:
    """Check one given value against `spec`; return it (an int for a float key becomes a
    float; a NUM value stays as given)."""
    if not _is_type(value, spec.type):
        raise _Bad(path, f"expected {type_name(spec.type)}, got {_describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Bad(path, f"must be a finite number, got {toml_text(value)}")
    if spec.type is float:
        value = float(value)
    if spec.item_type is not None:
        for j, item in enumerate(value):
            if not _is_type(item, spec.item_type):
                raise _Bad(path + (j,), f"expected {type_name(spec.item_type)}, "
                                        f"got {_describe(item)}")
    if spec.choices is not None and value not in spec.choices:
        raise _Bad(path, f"{toml_text(value)} is not one of "
                         f"{', '.join(toml_text(c) for c in spec.choices)}")
    if spec.check is not None:
        message = spec.check(value)
        if message:
            shown = toml_text(value)
            quoted = isinstance(value, str) and repr(value) in message
            raise _Bad(path, message if quoted else f"{message} (got {shown})")
    return copy.deepcopy(value)


def _reject_unknown(raw: dict[str, Any], known: tuple[str, ...], path: PathT,
                    list_allowed: bool = False) -> None:
    for key in raw:
        if key in known:
            continue
        message = f"unknown key {key!r}"
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        elif list_allowed:
            message += f" (allowed: {', '.join(known)})"
        raise _Bad(path + (key,), message)


def _is_type(value: Any, types: type | tuple[type, ...]) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False  # TOML true is not 1
    if float in types and int not in types and isinstance(value, int):
        return True  # TOML 1 for a float key
    return isinstance(value, types)


def _describe(value: Any) -> str:
    kind = type_name(type(value)) if type(value) in TYPE_NAMES else type(value).__name__
    shown = toml_text(value)
    return f"{kind} ({shown})" if len(shown) <= 40 else kind


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def describe_schema(schema: Table = SCHEMA) -> str:
    """The schema as Markdown (``tdsim schema``); see `tdsim.schema_doc`."""
    return _describe_schema(schema)
