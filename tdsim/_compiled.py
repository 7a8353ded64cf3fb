"""The optional compiled build (``make compiled``): where it lives, its manifest, and the guard
that uses it only when it was built from the current source.

``make compiled`` (``tools/build_compiled.py``) compiles the per-exit hot modules with mypyc
into ``build/compiled/tdsim/``, outside the package, and writes ``build/compiled/manifest.json``
with the sha256 of each compiled module's source.  Nothing is compiled by default, and nothing
compiled is ever put in ``tdsim/``: an extension module next to its source would silently
shadow every later edit of that source.

The build is used only when asked for (``TDSIM_COMPILED=1``, or ``tdsim --compiled``), and only
if every compiled module's source still hashes to what the manifest says and the build is for
this Python.  Then its directory goes in front of ``tdsim.__path__``: ``import tdsim.host``
finds the compiled module, and every module that was not compiled still comes from source.
Asked for but missing or stale, it is refused with one line naming what is wrong and exit
status 2.  Falling back to pure Python instead would hide a difference in speed of some 1.35x
from whoever asked; running a stale build would run old model code.

Compiled code is the same model and gives identical results (tests/test_compiled.py compares
them).  It differs in what Python's dynamism can do to it: a compiled caller does not see a
method monkeypatched on a class or an instance, which is why the test suite always runs pure
Python (tests/conftest.py).  docs/performance.md has the details.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

ENV_VAR = "TDSIM_COMPILED"
DIR_VAR = "TDSIM_COMPILED_DIR"  # another build directory than build/compiled (tests, installs)
PACKAGE = Path(__file__).resolve().parent  # the tdsim sources this process imports
DEFAULT_BUILD_DIR = PACKAGE.parent / "build" / "compiled"
MANIFEST_FORMAT = 1

ACTIVE = False  # the compiled build is in front of tdsim.__path__ in this process


class CompiledBuildError(Exception):
    """The compiled build was asked for but cannot be used (missing, stale, other Python)."""


def build_dir() -> Path:
    """Where the compiled build is: ``$TDSIM_COMPILED_DIR``, else build/compiled next to the
    package's source tree."""
    given = os.environ.get(DIR_VAR)
    return Path(given) if given else DEFAULT_BUILD_DIR


def source_hash(path: Path) -> str:
    """The sha256 of a source file's bytes, as the manifest records it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def python_tag() -> dict[str, str]:
    """What a build is bound to besides its sources: the interpreter and its ABI."""
    return {"cache_tag": str(sys.implementation.cache_tag),
            "ext_suffix": str(sysconfig.get_config_var("EXT_SUFFIX")),
            "version": sys.version.split()[0]}


def requested() -> bool:
    """Whether the environment asks for the compiled build (``TDSIM_COMPILED=1``); any value
    other than unset, empty, 0 or 1 is refused rather than guessed at."""
    value = os.environ.get(ENV_VAR, "")
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise CompiledBuildError(f"{ENV_VAR}={value!r}: use 1 (compiled build) or 0 (pure Python)")


def read_manifest(where: Path) -> dict[str, Any]:
    """The manifest of the build in `where`; CompiledBuildError if there is none."""
    manifest = where / "manifest.json"
    try:
        data: dict[str, Any] = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise CompiledBuildError(f"no compiled build ({manifest} is missing); build it with "
                                 "`make compiled`") from None
    except (OSError, ValueError) as e:
        raise CompiledBuildError(f"unreadable {manifest} ({e}); rebuild with "
                                 "`make compiled`") from None
    if data.get("format") != MANIFEST_FORMAT:
        raise CompiledBuildError(f"{manifest} has format {data.get('format')!r}, not "
                                 f"{MANIFEST_FORMAT}; rebuild with `make compiled`")
    return data


def check(where: Path | None = None, sources: Path = PACKAGE) -> list[str]:
    """The names of the compiled modules of the build in `where` (default `build_dir()`) if
    it is fresh for `sources`; else CompiledBuildError naming the first thing that is stale:
    another Python, a compiled module whose source changed or is gone, or an extension module
    the manifest does not list."""
    where = build_dir() if where is None else where
    data = read_manifest(where)
    here = python_tag()
    built_for = data.get("python", {})
    if built_for != here:
        raise CompiledBuildError(f"the compiled build is for Python {built_for.get('version')} "
                                 f"({built_for.get('cache_tag')}), this is {here['version']} "
                                 f"({here['cache_tag']}); rebuild with `make compiled`")
    modules: dict[str, str] = data["modules"]
    for name, digest in sorted(modules.items()):
        path = sources / f"{name}.py"
        if not path.exists():
            raise CompiledBuildError(f"the compiled build is stale: tdsim/{name}.py no longer "
                                     "exists; rebuild with `make compiled`")
        if source_hash(path) != digest:
            raise CompiledBuildError(f"the compiled build is stale: tdsim/{name}.py changed "
                                     "since it was built; rebuild with `make compiled`")
    listed = set(modules) | {data["library"]}
    suffix = here["ext_suffix"]
    for ext in sorted((where / "tdsim").glob(f"*{suffix}")):
        if ext.name.removesuffix(suffix) not in listed:
            raise CompiledBuildError(f"the compiled build is stale: {ext} is not in its "
                                     "manifest; rebuild with `make compiled`")
    return sorted(modules)


def activate(package_path: list[str]) -> list[str]:
    """Put a fresh compiled build in front of `package_path` (``tdsim.__path__``); returns
    the compiled module names.  Must run before any of them is imported."""
    global ACTIVE
    where = build_dir()
    modules = check(where)
    if not ACTIVE:
        loaded = [m for m in modules if f"tdsim.{m}" in sys.modules]
        if loaded:
            raise CompiledBuildError(f"the compiled build was asked for after tdsim.{loaded[0]} "
                                     "was imported from source")
        package_path.insert(0, str(where / "tdsim"))
        ACTIVE = True
    return modules


def activate_or_exit(package_path: list[str], force: bool = False) -> None:
    """`activate` if requested (or `force`), else nothing; a requested build that cannot be
    used is one line on stderr and exit status 2, never a silent fall-back to pure Python."""
    try:
        if force or requested():
            activate(package_path)
    except CompiledBuildError as e:
        print(f"tdsim: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
