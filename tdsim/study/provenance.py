"""Where a row came from: the tdsim version, a digest of the model's source, and the Python and
SimPy versions that ran it.

The version string alone cannot tell two builds of the model apart (it changes only at a
release), so every row also carries ``model_sha256``: SHA-256 over the path and content of
every ``tdsim/**/*.py`` file except the study package, which reads results but does not make
them.  ``--resume`` reuses only rows with the current model's digest (`check_resumable`).

A strategy loaded from a user's file (``kvm.host_state = "file.py:Class"``) is not part of
the digest: its path is in the resolved scenario, whose hash keys the row, but its content
is not.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

# The model's dependencies whose version can change a result (SimPy orders the events).
KEY_DEPENDENCIES = ("simpy",)
# What the analysis ran on (reported, not stored per row: it does not change a row).
ANALYSIS_DEPENDENCIES = ("numpy", "matplotlib", "pandas", "pyarrow", "scipy")

ROW_FIELDS = ("tdsim_version", "model_sha256", "python") + KEY_DEPENDENCIES


@functools.cache
def tdsim_version() -> str:
    try:
        from tdsim._version import __version__

        return __version__
    except ImportError:
        try:
            return metadata.version("tdsim")
        except metadata.PackageNotFoundError:
            return "0+unknown"


def model_files(root: Path | None = None) -> list[Path]:
    """The model's source files, sorted: ``tdsim/**/*.py`` without ``tdsim/study/``."""
    if root is None:
        import tdsim

        root = Path(tdsim.__file__).resolve().parent
    return sorted(p for p in root.rglob("*.py")
                  if "study" not in p.relative_to(root).parts[:1]
                  and "__pycache__" not in p.parts)


def source_digest(root: Path) -> str:
    """SHA-256 over (relative path, content) of every model file under `root`."""
    h = hashlib.sha256()
    for path in model_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def model_sha256() -> str:
    import tdsim

    return source_digest(Path(tdsim.__file__).resolve().parent)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


@functools.cache
def _row_provenance() -> tuple[tuple[str, str], ...]:
    fields = [("tdsim_version", tdsim_version()), ("model_sha256", model_sha256()),
              ("python", platform.python_version())]
    fields += [(d, _version(d)) for d in KEY_DEPENDENCIES]
    return tuple(fields)


def row_provenance() -> dict[str, str]:
    """The provenance fields of a row made in this process."""
    return dict(_row_provenance())


def analysis_versions() -> dict[str, str]:
    return {d: _version(d) for d in ANALYSIS_DEPENDENCIES}


def provenance_of(row: dict[str, Any]) -> tuple[str, ...]:
    """A row's provenance as a tuple of `ROW_FIELDS` ("unknown" where an old row lacks one)."""
    return tuple(str(row.get(k) or "unknown") for k in ROW_FIELDS)


def foreign_rows(rows: list[dict[str, Any]], digest: str) -> int:
    """How many of `rows` a model with another digest (or none recorded) wrote."""
    return sum(1 for r in rows if r.get("model_sha256") != digest)
