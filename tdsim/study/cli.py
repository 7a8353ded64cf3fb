"""``tdsim study STUDY.toml [--jobs N] [--executor local|dask] [--scheduler ADDR] [--out DIR]
[--resume [--allow-mixed]] [--dry-run] [--parquet]``

Exit status: 0 when every run succeeded, 1 when some runs failed (they are recorded and the
outputs are written anyway), 2 for bad input (one line naming the study file and key path,
nothing run), 130 when interrupted (finished runs are kept: rerun with ``--resume``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tdsim.study.execute import Executor

# The arguments, as (flags, add_argument keywords) pairs: the shape of tdsim.cli's `arg()`,
# so the main CLI registers the subcommand with ``subcommand(*STUDY_ARGS)(cmd_study)``.
STUDY_ARGS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("study",), {"type": Path, "help": "study file (TOML)"}),
    (("--jobs", "-j"), {"type": int, "default": os.cpu_count() or 1,
                        "help": "local worker processes (default: the CPU count); with "
                                "--executor dask and no --scheduler, the workers of a local "
                                "Dask cluster"}),
    (("--executor",), {"choices": ("local", "dask"), "default": "local",
                       "help": "local process pool (default) or Dask distributed"}),
    (("--scheduler",), {"metavar": "ADDR",
                        "help": "Dask scheduler address, e.g. tcp://10.0.0.1:8786 (default: "
                                "start a local cluster)"}),
    (("--out",), {"type": Path, "help": "output directory (default: out/<study name>)"}),
    (("--resume",), {"action": "store_true",
                     "help": "continue a study in --out, reusing every finished run"}),
    (("--allow-mixed",), {"action": "store_true",
                          "help": "with --resume: reuse runs that another version of the "
                                  "model made (refused by default; the report lists them)"}),
    (("--dry-run",), {"action": "store_true",
                      "help": "validate, list the design points and the run count, run "
                              "nothing"}),
    (("--no-plots",), {"action": "store_true",
                        "help": "write the tables and report without figures (faster)"}),
    (("--parquet",), {"action": "store_true",
                      "help": "also write OUT/results.parquet (one row per run; needs "
                              "pyarrow, in tdsim[study])"}),
)


def add_study_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``study`` on an argparse subparsers object; sets ``func=cmd_study``."""
    doc = (cmd_study.__doc__ or "").strip()
    p: argparse.ArgumentParser = subparsers.add_parser(
        "study", help=doc.splitlines()[0], description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(p)
    p.set_defaults(func=cmd_study)
    return p


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    for flags, kwargs in STUDY_ARGS:
        p.add_argument(*flags, **kwargs)


def _input_errors() -> tuple[type[Exception], ...]:
    from tdsim.scenario import ScenarioError
    from tdsim.study.design import StudyError

    return (StudyError, ScenarioError)


def _fail(e: Exception) -> int:
    print(f"tdsim: error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 2


def cmd_study(args: argparse.Namespace) -> int:
    """Run a study: sweeps, replications and paired strategy comparisons with CIs.

    Every design point x strategy x replication of the study file runs (in parallel), rows go
    to OUT/results.jsonl as runs finish, and OUT gets CSV tables, plots and report.md, which
    opens with the answer in words.  Everything is checked before the first run.
    Exit status: 0 all runs ok; 1 some runs failed (recorded, outputs written); 2 bad input;
    130 interrupted (rerun with --resume).
    """
    from tdsim.study.checks import check_out_dir, describe, resolve_points
    from tdsim.study.spec import load_study

    bad_input = _input_errors()
    if args.jobs < 1:
        print("tdsim: error: --jobs must be >= 1", file=sys.stderr)
        return 2
    if args.scheduler and args.executor != "dask":
        print("tdsim: error: --scheduler needs --executor dask", file=sys.stderr)
        return 2
    if args.allow_mixed and not args.resume:
        print("tdsim: error: --allow-mixed needs --resume", file=sys.stderr)
        return 2
    try:
        study = load_study(args.study)
        out = args.out or Path("out") / study.name
        check_out_dir(study, out)
        resolve_points(study)
        if args.dry_run:
            print(describe(study))
            return 0
        if not args.no_plots:
            _require("matplotlib")  # the figures need it (the study extra)
        check_out_dir(study, out, create=True)
    except bad_input as e:
        return _fail(e)

    from tdsim.study.progress import Progress, default_mode
    from tdsim.study.runner import run_study

    executor = None
    try:
        executor = _executor(args)
        result = run_study(study, out, executor=executor, resume=args.resume,
                           allow_mixed=args.allow_mixed, plots=not args.no_plots,
                           progress=Progress(study.name, default_mode(sys.stderr)))
        if args.parquet:
            from tdsim.study.data import export_parquet

            export_parquet(out)
    except bad_input as e:
        return _fail(e)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are in {out / 'results.jsonl'}; rerun with "
              "--resume to continue", file=sys.stderr)
        return 130
    finally:
        if executor is not None:
            executor.close()
    print(f"{study.name}: {len(result.rows)} runs ({result.ran} run now, {result.reused} "
          f"reused, {len(result.errors)} failed) -> {out / 'report.md'}")
    for name, n in result.summary.missing.items():
        print(f"warning: metric {name!r}: no run reported it ({n} runs): the model does not "
              "count it here", file=sys.stderr)
    if result.errors:
        print(f"{len(result.errors)} runs failed; first: {result.errors[0]['error']}",
              file=sys.stderr)
        return 1
    return 0


def _require(module: str) -> None:
    """Raise ModuleNotFoundError (which the CLI turns into one line naming the extra to
    install) if the optional `module` cannot be imported."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except ValueError:  # a module set to None in sys.modules
        found = False
    if not found:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)


def _executor(args: argparse.Namespace) -> Executor:
    from tdsim.study.execute import DaskExecutor, InProcessExecutor, LocalExecutor

    warm = not args.no_plots
    if args.executor == "dask":
        return DaskExecutor(args.scheduler, n_workers=args.jobs, warm_plotting=warm)
    if args.jobs == 1:
        return InProcessExecutor(warm_plotting=warm)
    return LocalExecutor(args.jobs, warm_plotting=warm)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m tdsim.study``) until the main CLI registers ``study``."""
    p = argparse.ArgumentParser(prog="python -m tdsim.study", description=__doc__)
    add_study_arguments(p)
    return cmd_study(p.parse_args(argv))
