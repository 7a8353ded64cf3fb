"""Shared pieces of study-file validation: the one-line error raiser and typed getters."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from tdsim.study.design import Metric, StudyError


class Errors:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, key_path: str, message: str) -> NoReturn:
        raise StudyError(self.path, key_path, message)


def type_name(t: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table", bool: "a boolean"}
    if isinstance(t, tuple):
        return "a number" if set(t) == {int, float} else " or ".join(names[x] for x in t)
    return names[t]


def get(raw: dict[str, Any], key: str, t: type | tuple[type, ...], err: Errors, *,
         required: bool = False, default: Any = None, where: str = "") -> Any:
    kp = f"{where}{key}"
    if key not in raw:
        if required:
            err(kp, "missing")
        return default
    v = raw[key]
    bool_ok = t is bool or (isinstance(t, tuple) and bool in t)
    if not isinstance(v, t) or (isinstance(v, bool) and not bool_ok):
        err(kp, f"must be {type_name(t)}, got {v!r}")
    return v


def string_list(raw: dict[str, Any], key: str, err: Errors,
                 default: list[str] | None = None, where: str = "") -> list[str]:
    v = get(raw, key, list, err, required=default is None, default=default, where=where)
    if not v:
        err(where + key, "must not be empty")
    for i, s in enumerate(v):
        if not isinstance(s, str) or not s:
            err(f"{where}{key}[{i}]", f"must be a non-empty string, got {s!r}")
    return list(v)


def check_strategy(name: str, key_path: str, err: Errors) -> None:
    from tdsim.schema import BUILTIN_STRATEGIES

    if name in BUILTIN_STRATEGIES:
        return
    target, colon, cls = name.rpartition(":")
    if not colon or not target or not cls:
        err(key_path, f"unknown strategy {name!r}: use one of "
            f"{', '.join(BUILTIN_STRATEGIES)}, or 'package.module:Class' / 'file.py:Class'")
    if target.endswith(".py") and not Path(target).is_file():
        err(key_path, f"strategy file {target!r} not found (relative paths are taken from "
            "the working directory)")


def parse_metric(name: str, key_path: str, err: Errors) -> Metric:
    """A metric name, a ``*`` sum, or a ratio of two of them (or of one and a number);
    every model metric it names must be declared in `tdsim.metrics`."""
    from tdsim.study.labels import unknown_metric

    parts = [p.strip() for p in name.split("/")]
    if len(parts) > 2 or not all(parts):
        err(key_path, f"{name!r}: a metric is a name or a ratio 'a/b'")
    why = unknown_metric(parts[0])
    if why:
        err(key_path, why)
    if len(parts) == 1:
        return Metric(name, parts[0])
    try:
        den: str | float = float(parts[1])
    except ValueError:
        den = parts[1]
        why = unknown_metric(den)
        if why:
            err(key_path, why)
    if den == 0:
        err(key_path, f"{name!r}: divides by zero")
    return Metric(name, parts[0], den)
