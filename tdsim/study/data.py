"""A study's results as data: `load` gives one pandas row per run, `export_parquet` writes
them as a Parquet file (both need the study extra: ``pip install 'tdsim[study]'``).

Columns: one per factor key (``host.tasks``), ``strategy``, ``replication``, ``seed``,
``status``, ``error``, ``wall_s``, ``scenario_sha256``, the provenance (``tdsim_version``,
``model_sha256``, ``python``, ``simpy``), ``point_index``, then one column per metric any run
reported (``exits``, ``wrmsr.total``, ``run.measured_s``, ...; NaN where a run did not report
it).  Rows are the newest stored row of every run, sorted by point, strategy name and
replication -- the runs `results.csv` holds, typed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tdsim.study.store import ROW_FIELDS, ResultStore

STORE_NAME = "results.jsonl"


def _records(out: Path) -> tuple[list[dict[str, Any]], list[str]]:
    store = ResultStore(out / STORE_NAME if out.is_dir() else out)
    if not store.path.is_file():
        raise FileNotFoundError(f"{store.path}: no study results here")
    rows = list(store.load().values())
    rows.sort(key=lambda r: (r["point_index"], str(r["strategy"]), r["replication"]))
    factor_keys = list(dict.fromkeys(k for r in rows for k in r["point"]))
    metric_names = sorted({m for r in rows for m in r.get("metrics", {})})
    records = []
    for r in rows:
        rec: dict[str, Any] = {k: r["point"].get(k) for k in factor_keys}
        rec.update({k: r.get(k) for k in ROW_FIELDS})
        metrics = r.get("metrics", {})
        rec.update({m: metrics.get(m) for m in metric_names})
        records.append(rec)
    return records, factor_keys + list(ROW_FIELDS) + metric_names


def load(out: str | Path) -> Any:
    """The runs of the study in `out` (its directory, or its ``results.jsonl``) as a
    `pandas.DataFrame`, one row per run."""
    import pandas as pd

    records, columns = _records(Path(out))
    frame = pd.DataFrame.from_records(records, columns=columns)
    for c in ("strategy", "status"):
        frame[c] = frame[c].astype("category")
    return frame


def export_parquet(out: str | Path, path: str | Path | None = None) -> Path:
    """Write the runs of the study in `out` to `path` (default ``out/results.parquet``)."""
    out = Path(out)
    target = Path(path) if path is not None else (out if out.is_dir() else out.parent
                                                  ) / "results.parquet"
    frame = load(out)
    # Factor levels may mix types across keys; Parquet needs one type per column.
    for c in frame.columns:
        if frame[c].dtype == object:
            kinds = {type(v) for v in frame[c].dropna()}
            if len(kinds) > 1:
                frame[c] = frame[c].map(lambda v: None if v is None else str(v))
    frame.to_parquet(target, index=False)
    return target
