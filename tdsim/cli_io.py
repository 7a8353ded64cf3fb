"""Checks and writes shared by the subcommands: output paths checked before anything runs,
files written whole or not at all, and the extra to install for a missing optional module.

Every check raises `tdsim.scenario.ScenarioError` (``<option>: <path>: <why>``), which the
CLI prints as one line with exit status 2.  `tdsim study` uses `check_output_dir` for
``--out``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tdsim.scenario import ScenarioError

# Optional modules -> the extra of tdsim that installs them (pyproject.toml).
EXTRAS = {"scipy": "study", "matplotlib": "study", "dask": "dask", "distributed": "dask",
          "cloudpickle": "dask"}


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """One line naming the extra to install when `e` is an optional dependency's absence;
    None when it is not (then it is a bug, or a broken install)."""
    top = (e.name or "").partition(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return (f"this needs the optional module {top!r}: install tdsim's {extra!r} extra "
            f"(pip install 'tdsim[{extra}]')")


def check_output_file(path: str, option: str, inputs: Iterable[str] = ()) -> None:
    """`path` can be written as a file: its directory exists and is writable, it is not a
    directory, not read-only, and not one of the `inputs`.  ``-`` (stdout) always can."""
    if path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise ScenarioError(option, path, "is a directory: give a file name")
    for given in inputs:
        if target.exists() and Path(given).exists() and target.samefile(given):
            raise ScenarioError(option, path, "is an input of this command: it would be "
                                              "overwritten")
    parent = target.parent
    if not parent.exists():
        raise ScenarioError(option, path, f"directory {parent} does not exist")
    if not parent.is_dir():
        raise ScenarioError(option, path, f"{parent} is not a directory")
    if target.exists() and not os.access(target, os.W_OK):
        raise ScenarioError(option, path, "is not writable")
    if not target.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ScenarioError(option, path, f"directory {parent} is not writable")


def check_output_dir(path: str | os.PathLike[str], option: str) -> None:
    """`path` can hold output files: an existing writable directory, or a directory that can
    be created (its nearest existing ancestor is a writable directory)."""
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            raise ScenarioError(option, str(path), "exists and is not a directory")
        if not os.access(target, os.W_OK | os.X_OK):
            raise ScenarioError(option, str(path), "is not writable")
        return
    ancestor = target.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ScenarioError(option, str(path), f"{ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ScenarioError(option, str(path), f"cannot be created: {ancestor} is not "
                                               "writable")


def check_distinct(outputs: dict[str, str | None]) -> None:
    """No two options write the same file (``--json r.json --log r.json``)."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None or path == "-":
            continue
        key = os.path.realpath(path)
        if key in seen:
            raise ScenarioError(option, path, f"is also the {seen[key]} file")
        seen[key] = option


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory, so a reader
    (or an interrupted tdsim) never sees half a document."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tdsim-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# --- diagnostics ------------------------------------------------------------------------------
# structlog is configured once per process, by the CLI, at the level main() recorded -- and
# only when something is first logged, so commands that log nothing never import it.
_log_level = "warning"
_logger: Any = None


def set_log_level(level: str) -> None:
    """Record the ``--log-level`` for `logger` (called once, by ``tdsim.cli.main``)."""
    global _log_level, _logger
    _log_level, _logger = level, None


def logger() -> Any:
    """The CLI's structlog logger: key-value lines on stderr at the recorded level."""
    global _logger
    if _logger is None:
        import logging
        import sys

        import structlog

        structlog.configure(
            processors=[structlog.processors.add_log_level,
                        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())],
            wrapper_class=structlog.make_filtering_bound_logger(
                getattr(logging, _log_level.upper())),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=False)
        _logger = structlog.get_logger("tdsim.cli")
    return _logger
