"""Host-state strategies: how TDX KVM saves and restores the host state the module clobbers.

A strategy is a class with four hooks, called by the TDX vendor code at the points where the
kernel does host-state work.  KVM itself keeps ``guest_state_loaded`` and counts
``host_state_reload``; a strategy only decides which MSRs are written, when, and what KVM's
user-return cache is told.  The three shipped strategies use exactly this interface, so a
user's strategy (``[kvm] host_state = "mypkg.mod:Class"`` or ``"path/file.py:Class"``) is a
first-class citizen.  A new strategy is about 20 lines::

    from tdsim.strategies import HostStateStrategy, MODULE_URET_VALUES
    from tdsim import arch

    class Lazy(HostStateStrategy):
        name = "lazy"
        def prepare_switch_to_guest(self, vcpu, cpu):
            vcpu.msr_host_kernel_gs_base = vcpu.host_gsbase()
            for slot, value in MODULE_URET_VALUES:
                cpu.uret.set(slot, value, SITE_PREPARE)
        def prepare_switch_to_host(self, vcpu, cpu):
            cpu.wrmsr(arch.MSR_KERNEL_GS_BASE, vcpu.msr_host_kernel_gs_base, SITE_PUT)

What a hook may use:

* ``cpu.wrmsr(msr, value, site)`` / ``cpu.rdmsr(msr)``: the real MSRs of this host CPU (cost
  charged and counted by MSR and site: `SITE_PREPARE`, `SITE_PUT`, `SITE_POST_EXIT`,
  `SITE_USER_RETURN`).
* ``cpu.uret``: KVM's per-CPU user-return MSR state (`tdsim.kvm_x86.KvmUserReturnMsrs`):
  ``set(slot, value, site)`` = kvm_set_user_return_msr (WRMSR only if the cache differs),
  ``update_cache(slot, value)`` = kvm_user_return_msr_update_cache (no WRMSR),
  ``on_user_return(site)`` = the notifier body.  Slots are the MSR indices.
* ``vcpu.msr_host_kernel_gs_base`` (vt field), ``vcpu.host_gsbase()`` (current->thread.gsbase),
  ``vcpu.guest_entered`` (free for a strategy's own per-vCPU flag), ``vcpu.host_debugctl``
  (the host DEBUGCTL that tdx_vcpu_run restores after every TDH.VP.ENTER when it has bits the
  module does not preserve).

The class attribute ``host_debugctl_at_entry`` says where the host DEBUGCTL is read: at every
entry, by vcpu_enter_guest (today's KVM, the default), or -- False, as Linux 6.16 did -- by
the strategy's own ``prepare_switch_to_guest``, once per load (`V616`).  The restores after
every TDH.VP.ENTER (DEBUGCTL, PKRU, XCR0, IA32_XSS: tdx_vcpu_run) are KVM's, the same under
every strategy.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from . import arch
from .host import SITE_POST_EXIT, SITE_PREPARE, SITE_PUT, SITE_USER_RETURN

if TYPE_CHECKING:
    from .host import HostCpu


class StrategyVcpu(Protocol):
    """What a strategy may use of a TD vCPU (`tdsim.kvm_tdx.VcpuTdx`)."""

    name: str
    msr_host_kernel_gs_base: int
    guest_entered: bool
    host_debugctl: int

    def host_gsbase(self) -> int: ...


__all__ = [
    "MODULE_URET_VALUES",
    "SITE_POST_EXIT",
    "SITE_PREPARE",
    "SITE_PUT",
    "SITE_USER_RETURN",
    "V616",
    "Current",
    "Eager",
    "HostStateStrategy",
    "StrategyError",
    "load_strategy",
]

# The user-return MSRs the module clobbers and the values it leaves (docs/host-state.md), in
# the order tdx_prepare_switch_to_guest sets them.
MODULE_URET_VALUES = (
    (arch.MSR_SYSCALL_MASK, arch.TDX_MODULE_EXIT_MSRS[arch.MSR_SYSCALL_MASK]),
    (arch.MSR_STAR, arch.TDX_MODULE_EXIT_MSRS[arch.MSR_STAR]),
    (arch.MSR_LSTAR, arch.TDX_MODULE_EXIT_MSRS[arch.MSR_LSTAR]),
    (arch.MSR_TSC_AUX, arch.TDX_MODULE_EXIT_MSRS[arch.MSR_TSC_AUX]),
)


class HostStateStrategy:
    """Base class: every hook does nothing.  Override what your design needs."""

    name = "base"
    host_debugctl_at_entry = True

    def prepare_switch_to_guest(self, vcpu: StrategyVcpu, cpu: HostCpu) -> None:
        """tdx_prepare_switch_to_guest body, run once per vcpu_load (while
        ``guest_state_loaded`` is false, before the late exit-request check)."""

    def vcpu_enter_exit(self, vcpu: StrategyVcpu, cpu: HostCpu, vp_enter_ret: int) -> None:
        """Right after TDH.VP.ENTER returns (tdx_vcpu_run, after tdx_vcpu_enter_exit), for
        every SEAMCALL made, whether or not the TD actually ran."""

    def prepare_switch_to_host(self, vcpu: StrategyVcpu, cpu: HostCpu) -> None:
        """tdx_prepare_switch_to_host body, at vcpu_put while ``guest_state_loaded``."""

    def user_return(self, cpu: HostCpu) -> None:
        """The user-return notifier (kvm_on_user_return) when a task returns to user mode
        on `cpu` while the notifier is registered."""
        cpu.uret.on_user_return(SITE_USER_RETURN)


class Current(HostStateStrategy):
    """Today's upstream (commit c0711f8c610e): set the user-return MSRs to the module's
    post-exit values before entry, so KVM's cache matches the hardware whether or not the
    TD runs; KERNEL_GS_BASE restored at put; host values restored at user return."""

    name = "current"

    def prepare_switch_to_guest(self, vcpu: StrategyVcpu, cpu: HostCpu) -> None:
        vcpu.msr_host_kernel_gs_base = vcpu.host_gsbase()
        uret = cpu.uret
        for slot, value in MODULE_URET_VALUES:
            uret.set(slot, value, SITE_PREPARE)

    def prepare_switch_to_host(self, vcpu: StrategyVcpu, cpu: HostCpu) -> None:
        cpu.wrmsr(arch.MSR_KERNEL_GS_BASE, vcpu.msr_host_kernel_gs_base, SITE_PUT)


class V616(HostStateStrategy):
    """TDX as first merged (Linux 6.16): ``guest_entered`` is set after every TDH.VP.ENTER
    return; at put, if set, the user-return *cache* is updated to the module's values
    without writing the MSRs.  Wrong when the SEAMCALL returned without entering
    (docs/late-aborts.md)."""

    name = "v6.16"
    host_debugctl_at_entry = False

    def prepare_switch_to_guest(self, vcpu: StrategyVcpu, cpu: HostCpu) -> None:
        vcpu.msr_host_kernel_gs_base = vcpu.host_gsbase()
        vcpu.host_debugctl = cpu.rdmsr(arch.MSR_IA32_DEBUGCTLMSR)  # get_debugctlmsr()

    def vcpu_enter_exit(self, vcpu: StrategyVcpu, cpu: HostCpu, vp_enter_ret: int) -> None:
        vcpu.guest_entered = True

    def prepare_switch_to_host(self, vcpu: StrategyVcpu, cpu: HostCpu) -> None:
        cpu.wrmsr(arch.MSR_KERNEL_GS_BASE, vcpu.msr_host_kernel_gs_base, SITE_PUT)
        if vcpu.guest_entered:
            uret = cpu.uret
            for slot, value in MODULE_URET_VALUES:
                uret.update_cache(slot, value)
            vcpu.guest_entered = False


class Eager(HostStateStrategy):
    """Hypothetical baseline: after every TDH.VP.ENTER return, write back the host value of
    every MSR the module may have clobbered (no reliance on the user-return notifier)."""

    name = "eager"

    def prepare_switch_to_guest(self, vcpu: StrategyVcpu, cpu: HostCpu) -> None:
        vcpu.msr_host_kernel_gs_base = vcpu.host_gsbase()

    def vcpu_enter_exit(self, vcpu: StrategyVcpu, cpu: HostCpu, vp_enter_ret: int) -> None:
        uret = cpu.uret
        for slot, _ in MODULE_URET_VALUES:
            cpu.wrmsr(slot, uret.host[slot], SITE_POST_EXIT)
        cpu.wrmsr(arch.MSR_KERNEL_GS_BASE, vcpu.msr_host_kernel_gs_base, SITE_POST_EXIT)


# The built-in strategies by name, declared once (the scenario schema and the CLI use it).
BUILTIN: dict[str, type[HostStateStrategy]] = {"current": Current, "v6.16": V616,
                                               "eager": Eager}


class StrategyError(ValueError):
    """A strategy spec that cannot be used: ``str()`` is one line saying why (the module or
    file cannot be imported or raised on import, the class is missing, or it is not a
    `HostStateStrategy`).  The scenario loader reports it under ``kvm.host_state``."""


def load_strategy(spec: str) -> HostStateStrategy:
    """Instantiate a strategy: a built-in name, ``"package.module:Class"`` or
    ``"path/file.py:Class"`` (the scenario loader has already made the path absolute).
    Raises `StrategyError` for a spec that cannot be used."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    target, _, cls_name = spec.rpartition(":")
    module = _import_strategy_module(target)
    cls = getattr(module, cls_name, None)
    if cls is None:
        classes = sorted(k for k, v in vars(module).items()
                         if isinstance(v, type) and issubclass(v, HostStateStrategy))
        close = difflib.get_close_matches(cls_name, classes, n=1)
        hint = (f" (did you mean {close[0]!r}?)" if close else
                f" (strategies there: {', '.join(classes)})" if classes else "")
        raise StrategyError(f"no class {cls_name!r} in {target}{hint}")
    if not (isinstance(cls, type) and issubclass(cls, HostStateStrategy)):
        what = "class" if isinstance(cls, type) else type(cls).__name__
        raise StrategyError(f"{cls_name!r} in {target} is a {what} that does not subclass "
                            "tdsim.strategies.HostStateStrategy")
    try:
        return cls()
    except Exception as e:  # the user's constructor: report it as bad input, in one line
        raise StrategyError(f"{cls_name}() raised {_one_line(e, target)}") from None


def _import_strategy_module(target: str) -> ModuleType:
    """The module of a strategy spec: a ``.py`` file (loaded once per path, under a name
    derived from the path) or an importable module."""
    if not target.endswith(".py"):
        try:
            return importlib.import_module(target)
        except ModuleNotFoundError as e:
            if e.name is not None and (target == e.name or target.startswith(e.name + ".")):
                raise StrategyError(f"no module named {e.name!r} (is it on the Python "
                                    "path?)") from None
            raise StrategyError(f"module {target} raised {_one_line(e, target, 'on import')}"
                                ) from None
        except (Exception, SystemExit) as e:
            raise StrategyError(f"module {target} raised {_one_line(e, target, 'on import')}"
                                ) from None
    path = Path(target)
    if not path.is_file():
        raise StrategyError(f"strategy file {path} does not exist" if not path.exists()
                            else f"strategy file {path} is not a file")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    mod_name = f"tdsim_user_strategy_{digest}"
    module = sys.modules.get(mod_name)
    if module is not None:
        return module
    mod_spec = importlib.util.spec_from_file_location(mod_name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise StrategyError(f"cannot load strategy file {path}")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_name] = module
    try:
        mod_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        del sys.modules[mod_name]  # a second attempt must not find it half-initialised
        raise StrategyError(f"strategy file {path} raised "
                            f"{_one_line(e, target, 'on import')}") from None
    return module


def _one_line(e: BaseException, target: str, when: str = "") -> str:
    """``Type when: message (line N)``: the exception and the innermost line of the user's
    file (or module) where it was raised."""
    text = " ".join(str(e).split())
    where = ""
    if isinstance(e, SyntaxError):
        text = " ".join(str(e.msg).split())
        where = f" (line {e.lineno})" if e.lineno else ""
    else:
        for frame in reversed(traceback.extract_tb(e.__traceback__)):
            if frame.filename == target or target.replace(".", "/") in frame.filename:
                where = f" (line {frame.lineno})"
                break
    name = f"{type(e).__name__} {when}".rstrip()
    return f"{name}: {text}{where}" if text else f"{name}{where}"
