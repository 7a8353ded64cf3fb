"""The scenario reference (``tdsim schema``): the schema as Markdown, one section per table
and one row per key with its type, default, limits and meaning; and how a key's type and a
value are spelt to a reader (`type_name`, `toml_text`), in that reference and in the
loader's error messages alike (`tdsim.scenario`)."""

from __future__ import annotations

import math
from typing import Any

from tdsim.schema import (
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

TYPE_NAMES = {int: "an integer", float: "a float", str: "a string", bool: "a boolean",
              list: "an array", dict: "a table"}


def type_name(types: type | tuple[type, ...]) -> str:
    """How a key's type reads in the scenario reference and in error messages ("an integer")."""
    types = types if isinstance(types, tuple) else (types,)
    if set(types) == {int, float}:
        return "a number"
    return " or ".join(TYPE_NAMES.get(t, t.__name__) for t in types)


def toml_text(value: Any) -> str:
    """`value` as it would be written in TOML (for messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return str(value)


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
        for k, key in keys:
            of = f" of {_bare_type(key.item_type)}" if key.item_type else ""
            out.append(f"| `{k}` | {_bare_type(key.type)}{of} | {_default_text(key)} "
                       f"| {_limits_text(key)} | {_md(key.doc)} |")
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
            assert isinstance(s.value, Key)
            out += [f"## `[{sub}]`", ""]
            if s.doc:
                out += [_md(s.doc[0].upper() + s.doc[1:]) + ".", ""]
            out += [f"Values: {_bare_type(s.value.type)}, "
                    f"{_limits_text(s.value) or 'any'}; {_md(s.value.doc)}.", "",
                    "| key | default |", "|---|---|"]
            if s.default:
                out[-2:-2] = ["The defaults apply when the table is absent; when it is given, "
                              f"keys it does not name are {toml_text(s.value.default)}.", ""]
            if s.allowed is None:
                out[-2:] = ["Keys: any name."]
            else:
                out += [f"| `{a}` | {toml_text(s.default.get(a, s.value.default))} |"
                        for a in s.allowed]
            out.append("")


def _bare_type(types: type | tuple[type, ...]) -> str:
    """``"integer"`` rather than ``"an integer"``."""
    return type_name(types).split(" ", 1)[1]


def _default_text(key: Key) -> str:
    if key.index_default is not None:
        return "`" + _md(toml_text(key.index_default.format(i="<i>"))) + "`"
    if key.default is None:
        return "unset"
    return "`" + _md(toml_text(key.default)) + "`"


def _limits_text(key: Key) -> str:
    parts = []
    if key.choices is not None:
        parts.append("one of " + ", ".join(f"`{toml_text(c)}`" for c in key.choices))
    if key.check is not None and key.check in _CHECK_TEXT:
        parts.append(_CHECK_TEXT[key.check])
    return _md("; ".join(parts))


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
