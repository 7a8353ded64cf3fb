"""The model's costs as uncertain inputs: their status and plausible range, and a Latin
hypercube over those ranges.

Every cost in `tdsim.schema.COSTS` declares a status (``source``, ``estimate``,
``placeholder``) and a plausible range; its doc begins ``[<status>; plausible <low>-<high>
ns]``.  A cost-uncertainty study (``[uncertainty]`` in a study file) draws samples of the
uncertain costs over those ranges and reruns the study's comparison at each sample
(`tdsim.study.sensitivity` reads the results).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

_DOC = re.compile(r"^\[(\w+); plausible (\d+)-(\d+) ns\]")


@dataclass(frozen=True)
class CostRange:
    name: str      # "wrmsr_ns" (the scenario key is costs.<name>)
    default: int
    status: str    # "source" | "estimate" | "placeholder"
    low: int
    high: int


def cost_ranges() -> dict[str, CostRange]:
    """Every cost of the model with its status and plausible range."""
    from tdsim.schema import COSTS, Key

    out = {}
    for name, key in COSTS.keys.items():
        if not isinstance(key, Key):
            continue
        m = _DOC.match(key.doc)
        if m is None:
            raise AssertionError(f"tdsim bug: costs.{name} declares no plausible range "
                                 f"(its doc must begin '[<status>; plausible <low>-<high> "
                                 f"ns]'): {key.doc!r}")
        out[name] = CostRange(name, int(key.default), m.group(1), int(m.group(2)),
                              int(m.group(3)))
    return out


def uncertain_costs() -> list[str]:
    """The costs whose value is not taken from a source: the ones a study should vary."""
    return [c.name for c in cost_ranges().values() if c.status != "source" and c.low < c.high]


def latin_hypercube(ranges: list[tuple[int, int]], samples: int, seed: int
                    ) -> list[tuple[int, ...]]:
    """`samples` points of a Latin hypercube over the integer `ranges`: each range is cut into
    `samples` equal strata, every stratum is used exactly once per cost, and the strata are
    paired at random across costs (McKay, Beckman & Conover 1979).  Uniform within a range;
    deterministic in `seed` (its own SHA-256-seeded stream, as `tdsim.rng` does)."""
    digest = hashlib.sha256(f"tdsim.study.lhs:{seed}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    columns = []
    for low, high in ranges:
        strata = list(range(samples))
        rng.shuffle(strata)
        columns.append([round(low + (high - low) * (k + rng.random()) / samples)
                        for k in strata])
    return [tuple(col[i] for col in columns) for i in range(samples)]
