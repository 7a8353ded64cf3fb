"""The model's SimPy environment: simulated time in integer nanoseconds.

SimPy allows float time; tdsim never uses it (every delay is a whole number of nanoseconds),
so this subclass only narrows the types the model sees.  Nothing else differs from
`simpy.Environment`.
"""

from __future__ import annotations

import simpy


class Environment(simpy.Environment):
    """`simpy.Environment` whose clock is an integer count of nanoseconds.

    The hot path reads ``_now`` (the attribute behind SimPy's ``now`` property) directly: a
    property call per read is a measurable share of the per-exit cost."""

    _now: int

    @property
    def now(self) -> int:
        """The current simulated time in ns."""
        return self._now
