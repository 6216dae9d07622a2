"""module_load: init_module, finit_module and delete_module calls, and the
modules the kernel requests (bpf/module.bpf.c)."""

from ..encoding import display
from . import Attach, Sensor, hook, register, result_text, tracepoint


def every_syscall_exit(*rodata: tuple[str, int]) -> tuple[Attach, ...]:
    """The exit of every syscall (bpf/module.bpf.c's every_exit), best way
    first: the host's one such program, which module_load (where there are
    no per-call tracepoints) and syscall32 share, each setting its job."""
    return (
        Attach("tp_btf", "sys_exit", ("module_btf_exit",), rodata),
        Attach("raw_tp", "sys_exit", ("module_rawtp_exit",), rodata),
        Attach("tracepoint", "raw_syscalls/sys_exit", ("module_raw_exit",), rodata),
    )


def _finish(ev: dict) -> None:
    ev["params_read"] = bool(ev["params_read"])


def _describe(ev: dict) -> str:
    what = ev["name"] or ev["path"] or b"?"
    text = f"{ev['op']} {display(what)}"
    if ev["op"] == "module_request":
        return text  # the kernel asks modprobe; no result to show
    if ev["op"] == "finit_module" and ev["name"] and ev["path"]:
        text += f" from {display(ev['path'])}"
    if ev["op"] == "init_module":
        text += f" ({ev['len']} bytes)"
    if ev["params"]:
        text += f" params={display(ev['params'])}"
    if ev["taints"]:
        text += f" taints={ev['taints']:#x}"
    return f"{text} {result_text(ev['ret'])}"


SENSOR = register(
    Sensor(
        name="module_load",
        object="module",
        kinds=("module_load",),
        summary="kernel module loads and unloads (init/finit/delete_module) and their result",
        hooks=(
            hook(
                "module_syscalls",
                # one program per call, where the kernel has module support
                Attach(
                    "tracepoint",
                    "syscalls/sys_enter_finit_module",
                    (
                        "module_init_enter",
                        "module_init_exit",
                        "module_finit_enter",
                        "module_finit_exit",
                        "module_delete_enter",
                        "module_delete_exit",
                    ),
                ),
                # the return of every syscall, filtered by number first:
                # kernels without modules still see (and refuse, ENOSYS) the
                # attempts; tp_btf reads the number with one load, raw_tp
                # skips the perf record the classic tracepoint builds per call
                *every_syscall_exit(("exit_modules", 1)),
            ),
            # the name the kernel loaded, and its taints
            hook(
                "module_load",
                tracepoint("module/module_load", "handle_module_load"),
                optional=True,
            ),
            # the file finit_module really reads (not the fd's file at entry)
            hook(
                "module_file",
                Attach("lsm", "kernel_read_file", ("module_lsm_read_file",)),
                optional=True,
            ),
            # modules the kernel asks modprobe for on a task's behalf
            hook(
                "module_request",
                tracepoint("module/module_request", "handle_module_request"),
                Attach("lsm", "kernel_module_request", ("module_lsm_request",)),
                optional=True,
            ),
        ),
        finish=_finish,
        describe=_describe,
        # with syscall32 loaded, its every-syscall program makes the 32-bit
        # module calls the per-call tracepoints skip (bpf/module.bpf.c)
        rodata={"modules_wanted": 1},
    )
)
