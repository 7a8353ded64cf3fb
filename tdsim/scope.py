"""Component scopes: the one place that spells a component's name in each of its forms.

A vCPU is ``td0.vcpu3`` in traces and findings, ``vm.td0.vcpu.3.`` in front of its metrics,
and ``vm.td0.vcpu3`` in front of the names of its random streams.  A host CPU is ``host.cpu2``.
Stream names decide seeds (`tdsim.rng`), so these spellings are part of the results.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .rng import stream


@dataclass(frozen=True, slots=True)
class VcpuScope:
    """The names of vCPU `index` of VM `vm`."""

    vm: str
    index: int

    @property
    def name(self) -> str:
        """``td0.vcpu3``: the vCPU in traces, findings and logs."""
        return f"{self.vm}.vcpu{self.index}"

    @property
    def metric_prefix(self) -> str:
        """``vm.td0.vcpu.3.``: in front of the vCPU's own metrics."""
        return f"vm.{self.vm}.vcpu.{self.index}."

    def stream(self, seed: int, what: str) -> random.Random:
        """The vCPU's stream `what` (``vm.td0.vcpu3.<what>``)."""
        return stream(seed, f"vm.{self.name}.{what}")


def vm_stream(seed: int, vm: str, what: str) -> random.Random:
    """A VM-wide stream (``vm.td0.<what>``)."""
    return stream(seed, f"vm.{vm}.{what}")


def cpu_name(index: int) -> str:
    """``host.cpu2``."""
    return f"host.cpu{index}"
