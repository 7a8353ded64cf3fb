"""Named, independent random streams.

Every source of randomness in a run has a name (``"vm.td0.vcpu3.workload"``,
``"host.task2"``) and its own `random.Random`, seeded from (run seed, name) through SHA-256.
Adding a knob or a stream never reshuffles another stream, and two runs that differ only in
the host-state strategy draw identical guest behaviour (common random numbers for paired
comparisons).  There is no global RNG anywhere in tdsim.
"""

from __future__ import annotations

import hashlib
import random
from math import log


def stream_seed(seed: int, name: str) -> int:
    """The stable 64-bit seed of stream `name` under run seed `seed`."""
    digest = hashlib.sha256(f"tdsim:{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def stream(seed: int, name: str) -> random.Random:
    """A fresh `random.Random` for stream `name`; same (seed, name) -> same draws anywhere."""
    return random.Random(stream_seed(seed, name))


def exp_ns(rng: random.Random, mean_ns: float) -> int:
    """An exponential gap of mean `mean_ns`, in whole nanoseconds (at least 1): the
    inter-arrival time of every Poisson source in tdsim."""
    # random.expovariate(1 / mean_ns), computed in place (the same value, one call fewer)
    return max(1, int(-log(1.0 - rng.random()) / (1.0 / mean_ns)))
