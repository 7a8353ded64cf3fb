"""``make compiled``: compile tdsim's per-exit hot modules with mypyc, outside the package.

mypyc compiles the modules into one shared library plus a small shim per module (C and
objects in ``build/compiled-c/``); setuptools builds them into ``build/compiled.new/``, and
the finished build replaces ``build/compiled/`` whole, with ``manifest.json`` (the sha256 of
every compiled module's source, hashed before the build and checked again after it, the
Python it was built for, the mypy that built it) written last.  ``tdsim._compiled`` reads
that manifest and uses the build only while every hash still matches.

Run with the venv's Python after ``pip install -e '.[compiled]'`` (mypy, which ships mypyc).
``--modules host segment ...`` compiles a subset (for measuring what pays); ``--out DIR``
builds elsewhere (then ``TDSIM_COMPILED_DIR=DIR`` uses it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.pop("TDSIM_COMPILED", None)  # the build itself never runs compiled code

from tdsim import _compiled  # noqa: E402  (after the path and environment are set)

# The modules a TD exit runs through, compiled by default (see docs/performance.md for what
# each group gains).
MODULES = (
    "host", "segment", "kvm_x86", "kvm_tdx", "kvm_vmx", "tdx_module", "vt", "tdvmcall",
    "tdvmcall_insn", "tdvmcall_msr", "kvm_hypercall", "guest", "guest_irq", "irqstats", "lapic",
)
LIBRARY = "_native__mypyc"  # the shared library all compiled modules live in (tdsim/...)


def build(modules: list[str], jobs: int, out: Path) -> None:
    """Compile `modules` (names in tdsim/) into a fresh `out` (build/compiled/) with its
    manifest."""
    import mypy.version
    from mypyc.build import mypycify
    from setuptools import Distribution  # type: ignore[import-untyped,unused-ignore]

    out = out.resolve()
    temp = out.parent / f"{out.name}-c"  # generated C and object files
    new = out.parent / f"{out.name}.new"
    for d in (temp, new):
        shutil.rmtree(d, ignore_errors=True)
    sources = [ROOT / "tdsim" / f"{m}.py" for m in modules]
    hashes = {m: _compiled.source_hash(p) for m, p in zip(modules, sources, strict=True)}

    cwd = Path.cwd()
    os.chdir(ROOT)  # mypy reads [tool.mypy] in pyproject.toml from here
    try:
        extensions = mypycify(
            # mypyc's plugin adds dependencies that change the order mypy checks tdsim's
            # import cycle in, and then module-level uses of lapic's tuple-assigned constants
            # (in tdvmcall_msr) are reported as "Cannot determine type"; mypy --strict over
            # the package (make typecheck) checks them, here they are just Any.
            # Absolute paths: compiled code's tracebacks name the real source files (the CLI
            # tells a bug in tdsim from one in a user's strategy by the file).
            ["--disable-error-code=has-type", *(str(p) for p in sources)],
            opt_level="3",
            group_name=f"tdsim.{LIBRARY.removesuffix('__mypyc')}",
            target_dir=str(temp),
        )
        dist = Distribution({"name": "tdsim-compiled", "ext_modules": extensions})
        dist.script_args = ["--quiet", "build_ext", "--build-lib", str(new), "--build-temp",
                            str(temp / "obj"), "--parallel", str(jobs)]
        dist.parse_command_line()
        dist.run_commands()
    finally:
        os.chdir(cwd)

    # The manifest must describe what was compiled: refuse a build whose sources changed
    # while mypyc read them.
    changed = [m for m, p in zip(modules, sources, strict=True)
               if _compiled.source_hash(p) != hashes[m]]
    if changed:
        shutil.rmtree(new, ignore_errors=True)
        raise SystemExit(f"build_compiled: tdsim/{changed[0]}.py changed during the build; "
                         "run `make compiled` again")
    manifest = {"format": _compiled.MANIFEST_FORMAT, "python": _compiled.python_tag(),
                "mypy": mypy.version.__version__, "library": LIBRARY,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "modules": hashes}
    shutil.rmtree(out, ignore_errors=True)
    new.rename(out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"compiled {len(modules)} modules into {out}/tdsim/: " + ", ".join(modules))
    print("use it with TDSIM_COMPILED=1 (or tdsim --compiled); edits to those modules make it "
          "stale until the next `make compiled`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/build_compiled.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", nargs="+", default=list(MODULES),
                        help="modules of tdsim/ to compile (default: the hot path)")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=_compiled.DEFAULT_BUILD_DIR,
                        help="the build directory (default: build/compiled; another one is "
                             "used with TDSIM_COMPILED_DIR=DIR)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if not (ROOT / "tdsim" / f"{m}.py").exists()]
    if unknown:
        parser.error(f"no such module in tdsim/: {', '.join(unknown)}")
    build(args.modules, args.jobs, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
