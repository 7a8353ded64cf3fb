"""Progress lines: a whole-study count and ETA, projected while sequential groups decide."""

from __future__ import annotations

import io

from tdsim.study.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


OK = {"status": "ok"}


def test_fixed_study_eta_is_for_the_whole_study():
    """10 runs planned, 4 done in 8 s: 6 left at 2 s each, 12 s."""
    clock, out = Clock(), io.StringIO()
    p = Progress("s", "lines", stream=out, every_s=0.0, clock=clock)
    p.schedule(10)
    for _ in range(4):
        clock.t += 2.0
        p.advance(OK)
    assert out.getvalue().splitlines()[-1] == (
        "s: 4/10 runs (40%), 0 failed, 0:08 elapsed, about 0:12 left for the whole study")


def test_sequential_total_is_projected_from_decided_groups():
    """4 groups of 10 first-stage runs; one decided +30 runs: the undecided three are
    projected alike, 40 + 30 + 3 x 30 = 160, until the second stage is scheduled."""
    clock = Clock()
    p = Progress("s", "off", clock=clock)
    p.expect_groups(4)
    p.schedule(40)
    p.decided_group(30)
    assert (p.total, p.projected) == (160, True)
    for extra in (10, 0, 20):
        p.decided_group(extra)
    assert p.total == 40 + 60
    p.schedule_second_stage(60)
    assert (p.total, p.projected) == (100, False)


def test_lines_are_rate_limited():
    """With every_s = 10, a line at most every 10 s, and always the last one."""
    clock, out = Clock(), io.StringIO()
    p = Progress("s", "lines", stream=out, every_s=10.0, clock=clock)
    p.schedule(20)
    for _ in range(20):
        clock.t += 1.0
        p.advance(OK)
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["1/20", "11/20", "20/20"]
