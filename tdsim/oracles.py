"""Oracles for late entry aborts: named checks of the modelled system, evaluated as the run
goes, recorded through `tdsim.invariants.Invariants.record` (time, CPU, vCPU, one line).

The host-state oracles already live in `tdsim.invariants` (``host_state_leak``,
``uret_cache_mismatch``, ``kernel_gs_base_not_restored``).  This module adds the ones that watch
the abort and exit-status paths:

* ``guest_msr_corruption`` -- a guest reads a user-return MSR it is entitled to (TSC_AUX via
  RDPID/RDTSCP) and sees a value other than the one KVM meant it to see.
* ``error_status_dispatched`` -- KVM dispatched a TDH.VP.ENTER *error* status to an exit
  handler as if its low bits were an exit reason.
* ``spurious_nmi`` -- KVM ran the host NMI handler for a TD exit that was not an NMI.
* ``spurious_external_interrupt`` -- KVM handled an EXTERNAL_INTERRUPT exit (ran the host IRQ
  dispatch) although no host interrupt caused the exit.
* ``tdvmcall_completion`` -- a TDVMCALL completed that the guest did not issue (twice, or from
  garbage), or the TD was re-entered with its TDVMCALL not completed.
* ``entry_on_associated_vcpu`` -- KVM issued TDH.VP.ENTER on one CPU for a vCPU the module has
  associated with another (KVM must TDH.VP.FLUSH on the old CPU first, reference §6).
"""

from __future__ import annotations

ORACLES = ("guest_msr_corruption", "error_status_dispatched", "spurious_nmi",
           "spurious_external_interrupt", "tdvmcall_completion", "entry_on_associated_vcpu")
