"""The results store: one JSON line per finished run, appended and flushed as it arrives.

A study killed at any moment loses at most the runs in flight: every finished run is already a
complete line (a line cut short by the kill is skipped on reading).  ``--resume`` reads the
store and skips every run whose key — design point, strategy, replication and the SHA-256 of
the resolved scenario — already has an ``ok`` row.  Failed runs are rerun on resume (a lost
worker is not a property of the model); the newest row for a key wins.

Row fields (flat JSON; the CSV export spreads `point` and `metrics` into columns):

``point`` {dotted key: value}, ``point_index``, ``strategy``, ``replication``, ``seed``,
``scenario_sha256``, the provenance (``tdsim_version``, ``model_sha256``, ``python``,
``simpy``: `tdsim.study.provenance`), ``status`` ("ok" | "error"), ``error`` (one line or
null), ``traceback``, ``wall_s``, ``metrics`` {name: number} (every metric the model reported,
plus ``run.measured_s``, ``violations`` and ``violations.<invariant>``),
``violation_examples`` (the first few), and ``series`` {metric: [value per window]} when the
study asked for per-window series and the model provides them.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tdsim.study.design import point_key
from tdsim.study.provenance import ROW_FIELDS as PROVENANCE_FIELDS

RunKey = tuple[str, str, int, str]  # (point key, strategy, replication, scenario sha256)

ROW_FIELDS = ("point_index", "strategy", "replication", "seed", "status", "error", "wall_s",
              "scenario_sha256") + PROVENANCE_FIELDS


def row_key(row: dict[str, Any]) -> RunKey:
    return (point_key(row["point"]), row["strategy"], row["replication"],
            row["scenario_sha256"])


class ResultStore:
    """An append-only JSON-lines file of run rows."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.skipped_lines = 0  # unreadable lines seen by the last `load`
        self._tail_checked = False

    def exists(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every readable row in file order; a torn or corrupt line is counted and skipped."""
        self.skipped_lines = 0
        if not self.path.exists():
            return
        with self.path.open("r", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    row_key(row)
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.skipped_lines += 1
                    continue
                yield row

    def load(self) -> dict[RunKey, dict[str, Any]]:
        """The newest row per run key."""
        return {row_key(r): r for r in self.rows()}

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and flush it to the OS, so a killed study keeps it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, sort_keys=True, allow_nan=True)
        with self.path.open("a", encoding="utf-8") as f:
            # A previous writer killed mid-line leaves no newline; start on a fresh line so
            # the torn fragment stays one skippable line.
            if not self._tail_checked:
                self._tail_checked = True
                if f.tell() > 0 and not _ends_with_newline(self.path):
                    f.write("\n")
            f.write(line + "\n")
            f.flush()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def write_rows_csv(rows_in: Iterable[dict[str, Any]], path: str | Path,
                   factor_keys_in: Iterable[str]) -> None:
    """One CSV line per run: factor columns, run fields, then every metric seen (sorted)."""
    rows = list(rows_in)
    factor_keys = list(factor_keys_in)
    metric_names = sorted({m for r in rows for m in r.get("metrics", {})})
    header = factor_keys + list(ROW_FIELDS) + metric_names
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([r["point"].get(k, "") for k in factor_keys]
                       + [_cell(r.get(k)) for k in ROW_FIELDS]
                       + [_cell(r.get("metrics", {}).get(m)) for m in metric_names])


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v
