"""Scenario loading: TOML text -> overrides -> validation -> the fully resolved scenario.

A scenario file is checked against `tdsim.schema.SCHEMA` before anything runs.  The result,
`Scenario.data`, has every table present and every default filled in from the schema, so the
model reads plain dicts and never needs a default of its own.  Any problem with the input is a
`ScenarioError` whose text is one line naming the file and the key path
(``baseline.toml: vm[0].pin[1]: CPU 7 does not exist: host.cpus = 4``).

The engine is generic over the schema's node types (`Key`, `Table`, `Map`, `ArrayOfTables`);
rules that relate several keys (pins against ``host.cpus``, a wake source for ``hlt``) are
the functions listed in `CROSS_CHECKS`.

Overrides (``--set KEY=VALUE`` on the command line) use dotted keys; a numeric segment indexes
an array of tables, and the index one past the end appends a new item (``vm.1.vcpus=2`` adds
a second VM).  A value is parsed as a TOML literal and falls back to the plain string;
nothing is ever evaluated.
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

from tdsim.schema import (
    BUILTIN_STRATEGIES,
    SCHEMA,
    ArrayOfTables,
    Key,
    Map,
    Table,
    non_negative,
    positive,
    probability,
    probability_below_one,
)

PathT = tuple[str | int, ...]
Overrides = list[str] | Mapping[str, Any] | None  # see `apply_overrides`

_MISSING = object()


class ScenarioError(Exception):
    """Bad scenario input; ``str()`` is one line: ``"<file>: <key path>: <message>"``."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.message = " ".join(str(message).splitlines())
        super().__init__(f"{file}: {key}: {self.message}")


class _Bad(Exception):
    """Raised inside the engine with a key path; turned into a `ScenarioError` at the top."""

    def __init__(self, path: PathT, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


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
        return self.data["sim"]["seed"]

    def replace(self, overrides: Overrides = None) -> Scenario:
        """A new scenario: this one's resolved data with `overrides` applied and re-validated."""
        return scenario_from_dict(self.data, name=self.path, overrides=overrides)

    def to_toml_dict(self) -> dict[str, Any]:
        """`data` without the unset (``None``) keys, which TOML cannot express."""
        return _drop_none(self.data)


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
        # An override's path is typed relative to the shell, not to the scenario file.
        from_cli = any(p == ("kvm", "host_state")[: len(p)] for p in overridden)
        _resolve_strategy_path(data, Path.cwd() if from_cli or base_dir is None else base_dir)
        _resolve_programs(data, Path.cwd() if base_dir is None else base_dir)  # issue 5
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
    """Split ``"KEY=VALUE"`` into the dotted key and its parsed value."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise _Bad(("--set",), f"expected KEY=VALUE, got {item!r}")
    return key, parse_value(text.strip())


def apply_overrides(raw: dict[str, Any], overrides: Overrides) -> list[PathT]:
    """Apply `overrides` to the unvalidated dict `raw` in place; return the paths set.

    `overrides` is a list of ``"KEY=VALUE"`` strings (values parsed by `parse_value`) or a
    mapping from dotted key to an already-typed value.
    """
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    elif isinstance(overrides, str):
        pairs = [parse_override(overrides)]
    else:
        pairs = [parse_override(item) for item in overrides]
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
            if n == len(node):
                node.append(value if last else {})
            elif last:
                node[n] = value
            spec = spec.item if isinstance(spec, ArrayOfTables) else None
        elif isinstance(node, dict):
            spec = spec.keys.get(seg) if isinstance(spec, Table) else None
            if last:
                node[seg] = value
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
        raise _Bad(path, f"expected {_type_name(spec.type)}, got {_describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Bad(path, f"must be a finite number, got {_toml(value)}")
    if spec.type is float:
        value = float(value)
    if spec.item_type is not None:
        for j, item in enumerate(value):
            if not _is_type(item, spec.item_type):
                raise _Bad(path + (j,), f"expected {_type_name(spec.item_type)}, "
                                        f"got {_describe(item)}")
    if spec.choices is not None and value not in spec.choices:
        raise _Bad(path, f"{_toml(value)} is not one of "
                         f"{', '.join(_toml(c) for c in spec.choices)}")
    if spec.check is not None:
        message = spec.check(value)
        if message:
            shown = _toml(value)
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


_TYPE_NAMES = {int: "an integer", float: "a float", str: "a string", bool: "a boolean",
               list: "an array", dict: "a table"}


def _type_name(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    if set(types) == {int, float}:
        return "a number"
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def _toml(value: Any) -> str:
    """`value` as it would be written in TOML (for messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return str(value)


def _describe(value: Any) -> str:
    kind = _type_name(type(value)) if type(value) in _TYPE_NAMES else type(value).__name__
    shown = _toml(value)
    return f"{kind} ({shown})" if len(shown) <= 40 else kind


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


# --- cross-field checks -----------------------------------------------------------------------


def _check_vm_names(data: dict[str, Any]) -> None:
    """VM names are unique (they scope every vCPU: ``td0.vcpu3``)."""
    seen: dict[str, int] = {}
    for i, vm in enumerate(data["vm"]):
        if vm["name"] in seen:
            raise _Bad(("vm", i, "name"), f"duplicate VM name {vm['name']!r} "
                                          f"(also vm[{seen[vm['name']]}])")
        seen[vm["name"]] = i


def _check_pins(data: dict[str, Any]) -> None:
    """A pin list has one entry per vCPU, each an existing host CPU."""
    cpus = data["host"]["cpus"]
    for i, vm in enumerate(data["vm"]):
        pin = vm["pin"]
        if pin is None:
            continue
        if len(pin) != vm["vcpus"]:
            entries = "entry" if len(pin) == 1 else "entries"
            raise _Bad(("vm", i, "pin"), f"has {len(pin)} {entries} but vcpus = {vm['vcpus']}: "
                                         f"give one host CPU per vCPU")
        for j, cpu in enumerate(pin):
            if not 0 <= cpu < cpus:
                raise _Bad(("vm", i, "pin", j), f"CPU {cpu} does not exist: host.cpus = "
                                                f"{cpus} (valid 0..{cpus - 1})")


def _check_mix(data: dict[str, Any]) -> None:
    """Each mix has a positive weight; a mix that halts has a timer to wake the vCPU."""
    for i, vm in enumerate(data["vm"]):
        workload = vm["workload"]
        mix = workload["mix"]
        if not any(w > 0 for w in mix.values()):
            raise _Bad(("vm", i, "workload", "mix"),
                       "all weights are 0: give at least one TDVMCALL kind a positive weight")
        if mix.get("hlt", 0) > 0 and not workload["timer_hz"] > 0:
            raise _Bad(("vm", i, "workload", "mix", "hlt"),
                       f"a halted vCPU could never be woken: set "
                       f"vm[{i}].workload.timer_hz > 0")


def _check_strategy_syntax(data: dict[str, Any]) -> None:
    """A user strategy is ``package.module:Class`` or ``path/file.py:Class`` (the model
    imports it; only the spelling is checked here)."""
    spec = data["kvm"]["host_state"]
    if spec in BUILTIN_STRATEGIES:
        return
    target, _, cls = spec.rpartition(":")
    is_file = target.endswith(".py") and len(target) > 3
    is_module = all(part.isidentifier() for part in target.split("."))
    if not (cls.isidentifier() and (is_file or is_module)):
        raise _Bad(("kvm", "host_state"), f"bad strategy {spec!r}: expected one of "
                                          f"{', '.join(BUILTIN_STRATEGIES)}, "
                                          f'"package.module:Class" or "path/file.py:Class"')


def _resolve_strategy_path(data: dict[str, Any], base_dir: str | os.PathLike[str]) -> None:
    """Make a relative ``file.py:Class`` strategy absolute, so a run works from any cwd."""
    spec = data["kvm"]["host_state"]
    target, _, cls = spec.rpartition(":")
    if spec in BUILTIN_STRATEGIES or not target.endswith(".py"):
        return
    target = os.path.expanduser(target)
    if not os.path.isabs(target):
        target = os.path.join(base_dir, target)
    data["kvm"]["host_state"] = f"{os.path.abspath(target)}:{cls}"


def _resolve_programs(data: dict[str, Any], base_dir: str | os.PathLike[str]) -> None:
    """Scripted guests (issue 5): inline a ``program_file`` into ``program`` (the resolved
    scenario then carries the program itself) and check every program's steps."""
    from tdsim.program import ProgramError, compile_program, load_program_file

    for i, vm in enumerate(data["vm"]):
        workload = vm["workload"]
        if workload["program_file"] is not None:
            where = ("vm", i, "workload", "program_file")
            if workload["program"]:
                raise _Bad(where, "set `program` or `program_file`, not both")
            path = Path(os.path.expanduser(workload["program_file"]))
            if not path.is_absolute():
                path = Path(base_dir) / path
            try:
                workload["program"] = load_program_file(path)
            except (OSError, ValueError) as e:
                raise _Bad(where, f"{path}: {e}") from None
            workload["program_file"] = None
        try:
            compile_program(workload["program"])
        except ProgramError as e:
            raise _Bad(("vm", i, "workload", "program") + e.path, e.message) from None
        if workload["program"] and vm["flavor"] != "tdx":
            raise _Bad(("vm", i, "workload", "program"), "scripted guests are TDs (flavor tdx)")
        if workload["program"]:
            # issue 4's guest behaviours are statistical (tdsim.guest_irq): a program states
            # its calls itself
            intr, sept = vm["interrupts"], vm["sept"]
            for path, on in ((("workload", "timer_mode"), workload["timer_mode"] == "oneshot"),
                             (("interrupts", "ipi_hz"), intr["ipi_hz"] > 0),
                             (("interrupts", "hlt_irqs_off_p"), intr["hlt_irqs_off_p"] > 0),
                             (("sept", "private_fault_hz"), sept["private_fault_hz"] > 0)):
                if on:
                    raise _Bad(("vm", i) + path, "not with a scripted guest (`program`): "
                               "write the calls in the program instead")
def _check_device_irq_vcpus(data: dict[str, Any]) -> None:
    """issue 4: device interrupts are routed to existing vCPUs; a guest halting with
    interrupts disabled has NMIs to wake it."""
    for i, vm in enumerate(data["vm"]):
        if vm["interrupts"]["hlt_irqs_off_p"] > 0 and not vm["interrupts"]["nmi_hz"] > 0:
            raise _Bad(("vm", i, "interrupts", "hlt_irqs_off_p"),
                       f"a vCPU halted with interrupts disabled wakes only on an NMI: set "
                       f"vm[{i}].interrupts.nmi_hz > 0")
        targets = vm["interrupts"]["device_irq_vcpus"]
        if vm["interrupts"]["device_irq_hz"] > 0 and not targets:
            raise _Bad(("vm", i, "interrupts", "device_irq_vcpus"), "empty: route the device "
                       "interrupts to at least one vCPU")
        for j, v in enumerate(targets):
            if not 0 <= v < vm["vcpus"]:
                raise _Bad(("vm", i, "interrupts", "device_irq_vcpus", j),
                           f"vCPU {v} does not exist (valid 0..{vm['vcpus'] - 1})")


# Run in order on the resolved data; each raises _Bad at the first problem.  Add new
# relations between keys here.
CROSS_CHECKS = [_check_vm_names, _check_pins, _check_mix, _check_strategy_syntax,
                _check_device_irq_vcpus]


# --- reference documentation ------------------------------------------------------------------

_CHECK_TEXT = {positive: "> 0", non_negative: ">= 0", probability: "0 to 1",
               probability_below_one: "0 to < 1"}


def describe_schema(schema: Table = SCHEMA) -> str:
    """The schema as Markdown: one section per table, one row per key with its type, default,
    limits and meaning (``tdsim schema`` prints it; the README's reference is this text)."""
    out = ["# Scenario reference", "",
           "Every key a scenario file may set. Unknown keys are errors; a key left out takes "
           "the default shown. Override any key from the command line with "
           "`--set KEY=VALUE` (dotted keys, `vm.0.vcpus=4`; the value is a TOML literal).", ""]
    _describe_table(schema, "", out)
    return "\n".join(out).rstrip() + "\n"


def _describe_table(table: Table, name: str, out: list[str], heading: str | None = None) -> None:
    keys = [(k, s) for k, s in table.keys.items() if isinstance(s, Key)]
    if keys or table.doc:
        out += [f"## `{heading or f'[{name}]'}`", ""]
        if table.doc:
            out += [table.doc, ""]
    if keys:
        out += ["| key | type | default | limits | meaning |", "|---|---|---|---|---|"]
        for k, s in keys:
            of = f" of {_bare_type(s.item_type)}" if s.item_type else ""
            out.append(f"| `{k}` | {_bare_type(s.type)}{of} | {_default_text(s)} "
                       f"| {_limits_text(s)} | {_md(s.doc)} |")
        out.append("")
    for k, s in table.keys.items():
        sub = f"{name}.{k}" if name else k
        if isinstance(s, Table):
            _describe_table(s, sub, out)
        elif isinstance(s, ArrayOfTables):
            item = Table(s.item.keys, doc=" ".join(filter(None, [s.doc, s.item.doc, (
                f"At least {s.min_items}; {s.default_items} created when absent.")])))
            _describe_table(item, sub, out, heading=f"[[{sub}]]")
        elif isinstance(s, Map) and isinstance(s.value, Table):
            _describe_table(Table(s.value.keys, doc=s.doc[0].upper() + s.doc[1:] + "."),
                            f"{sub}.<name>", out)
        elif isinstance(s, Map):
            out += [f"## `[{sub}]`", ""]
            if s.doc:
                out += [_md(s.doc[0].upper() + s.doc[1:]) + ".", ""]
            out += [f"Values: {_bare_type(s.value.type)}, "
                    f"{_limits_text(s.value) or 'any'}; {_md(s.value.doc)}.", "",
                    "| key | default |", "|---|---|"]
            if s.default:
                out[-2:-2] = ["The defaults apply when the table is absent; when it is given, "
                              f"keys it does not name are {_toml(s.value.default)}.", ""]
            if s.allowed is None:
                out[-2:] = ["Keys: any name."]
            else:
                out += [f"| `{a}` | {_toml(s.default.get(a, s.value.default))} |"
                        for a in s.allowed]
            out.append("")


def _bare_type(types: type | tuple[type, ...]) -> str:
    """``"integer"`` rather than ``"an integer"``."""
    return _type_name(types).split(" ", 1)[1]


def _default_text(key: Key) -> str:
    if key.index_default is not None:
        return "`" + _md(_toml(key.index_default.format(i="<i>"))) + "`"
    if key.default is None:
        return "unset"
    return "`" + _md(_toml(key.default)) + "`"


def _limits_text(key: Key) -> str:
    parts = []
    if key.choices is not None:
        parts.append("one of " + ", ".join(f"`{_toml(c)}`" for c in key.choices))
    if key.check is not None and key.check in _CHECK_TEXT:
        parts.append(_CHECK_TEXT[key.check])
    return _md("; ".join(parts))


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
