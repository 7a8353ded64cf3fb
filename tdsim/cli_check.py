"""The body of ``tdsim check`` (arguments declared in `tdsim.cli`): scenarios as regression
tests.  Loads every scenario first (bad input stops the command before anything runs),
estimates each one's work as ``tdsim run`` does (`tdsim.cli_run.check_work`), then checks each
with `tdsim.expect.check_scenario` and prints its report."""

from __future__ import annotations

import argparse

from tdsim.cli_estimate import estimate
from tdsim.cli_run import check_work
from tdsim.expect import check_scenario, strategies_run
from tdsim.scenario import load_scenario


def cmd_check(args: argparse.Namespace) -> int:
    """Load every scenario, estimate the work, then check each one; exit status 1 if any
    fails."""
    scenarios = [load_scenario(path, args.overrides) for path in args.scenarios]
    for scenario in scenarios:
        one = estimate(scenario.data, traced=True)
        runs = len(strategies_run(scenario.data))
        check_work(scenario, type(one)(one.events * runs, one.td_exits * runs,
                                       one.wall_s * runs, one.memory_bytes, one.key),
                   args.allow_long, quiet=False)
    status = 0
    for scenario in scenarios:
        report = check_scenario(scenario, update_fingerprints=args.update_fingerprints,
                                fingerprints=not args.overrides)
        print(report.render(), flush=True)
        if not report.ok:
            status = 1
    return status
