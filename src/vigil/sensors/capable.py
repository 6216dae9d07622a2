"""capable: capability checks and their verdicts (bpf/capable.bpf.c)."""

from .. import caps, kernel
from . import Attach, Sensor, hook, register, tracepoint


def _finish(ev: dict) -> None:
    # set by the kernel only for a check made inside execve (bpf/capable.h);
    # b"" otherwise, and the process table fills it in
    ev["exe"] = ev["exe"].partition(b"\0")[0]
    ev["cap_name"] = caps.name(ev["cap"])
    ev["init_ns"] = bool(ev["init_ns"])
    ev["other_cred"] = bool(ev["other_cred"])
    if ev["syscall_nr"] < 0:  # a kernel thread: in no syscall
        ev["syscall"] = None


def _describe(ev: dict) -> str:
    text = f"{ev['cap_name'] or ev['cap']} {ev['verdict']}"
    if not ev["init_ns"]:
        text += f" in userns {ev['target_ns_inum']}"
    # a check by credentials of another namespace than the one checked
    # against: from inside a container toward the host, for one
    if ev["cred_ns_inum"] != ev["target_ns_inum"]:
        text += f" from userns {ev['cred_ns_inum']}"
    if ev["audit"] == "no":
        text += " (noaudit)"
    if ev["other_cred"]:
        text += " (other cred)"
    # which call asked: a mount's CAP_SYS_ADMIN vs the one every exec makes
    if ev.get("syscall") is not None:  # absent from events stored before it existed
        text += f" via {ev['syscall']}"
    return text


SENSOR = register(
    Sensor(
        name="capable",
        object="capable",
        kinds=("capable",),
        summary="capability checks (cap_capable), allowed or denied",
        hooks=(
            hook(
                "cap_capable",
                # stable and one program, but no `opts`: audit unknown
                tracepoint("capability/cap_capable", "handle_cap_capable"),
                # older kernels (no tracepoint before 6.14): audit known
                Attach("fentry", "cap_capable", ("capable_fexit",)),
                Attach("kprobe", "cap_capable", ("capable_kprobe", "capable_kretprobe")),
            ),
        ),
        finish=_finish,
        describe=_describe,
        # The memory-accounting CAP_SYS_ADMIN check is told by its caller
        # (bpf/capable.bpf.c), whose text is found in kallsyms at load.
        rodata={
            "acct_fn_start": lambda: kernel.function_range("cap_vm_enough_memory")[0],
            "acct_fn_end": lambda: kernel.function_range("cap_vm_enough_memory")[1],
            "acct_hook_start": lambda: kernel.function_range("security_vm_enough_memory_mm")[0],
            "acct_hook_end": lambda: kernel.function_range("security_vm_enough_memory_mm")[1],
        },
        # A busy host checks CAP_SYS_ADMIN on many mmaps and CAP_SETUID on
        # every setuid(): the monitor keeps one record per process image,
        # capability, verdict, namespace kind and syscall (a denial is never
        # hidden), and none of the memory-accounting check, which every
        # exec, fork, mmap and brk makes (counted by the `capabilities` summary).
        monitor_rodata={"unique": 1, "skip_accounting": 1},
    )
)
