"""Statistical studies: replications, sweeps and paired comparisons with trustworthy intervals.

`spec` reads study files into `design` objects, `checks` validates them against the model,
`runner` drives them through an executor (`execute`) into a results store (`store`),
`sequential` decides two-stage replication counts, `summary`/`stats` turn rows into
estimates and verdicts, `verdicts`, `plots`, `sensitivity`, `warmup` and `report` write the
outputs, `data` loads results into pandas, and `cli` is the ``tdsim study`` subcommand.  The
model never imports this package.

``tdsim.study.load(OUT)`` returns the runs of the study in OUT as a pandas DataFrame.
"""

from __future__ import annotations

from typing import Any


def load(out: Any) -> Any:
    """The runs of the study in `out` as a `pandas.DataFrame` (see `tdsim.study.data`)."""
    from tdsim.study.data import load as _load

    return _load(out)


def export_parquet(out: Any, path: Any = None) -> Any:
    """Write the runs of the study in `out` as Parquet (see `tdsim.study.data`)."""
    from tdsim.study.data import export_parquet as _export

    return _export(out, path)


__all__ = ["export_parquet", "load"]
