"""exec: every execve/execveat, failed ones included (bpf/exec.bpf.c)."""

from ..encoding import display, display_args
from . import Attach, Sensor, hook, register, tracepoint

# d_path() of a memfd, as simple_dname() renders it: "/memfd:<name> (deleted)".
_MEMFD_PREFIX = b"/memfd:"
_MEMFD_SUFFIX = b" (deleted)"


def _finish(ev: dict) -> None:
    # argv arrives as argc NUL-terminated strings back to back
    raw = ev.pop("args")
    ev["args"] = raw.split(b"\0")[: ev["argc"]] if raw else []
    ev.pop("args_size", None)
    # The kernel decided it is a memfd (exe_kind); its name is exe's leaf,
    # which the kernel always writes in that one form.
    if ev["exe_kind"] == "memfd":
        ev["memfd_name"] = ev["exe"].removeprefix(_MEMFD_PREFIX).removesuffix(_MEMFD_SUFFIX)


def _describe(ev: dict) -> str:
    ret = "" if ev["ret"] == 0 else f"ret={ev['ret']} "
    kind = ev.get("exe_kind")  # absent from events stored before it existed
    exe = f"[{kind}] " if kind in ("memfd", "deleted") else ""
    # the script a "#!" exec opened, when its interpreter is what runs
    opened = ev.get("file")
    script = f"[script {display(opened)}] " if opened and opened != ev["exe"] and ev["exe"] else ""
    return f"{ret}{exe}{script}{display(ev['filename'])}  {display_args(ev['args'])}"


SENSOR = register(
    Sensor(
        name="exec",
        object="exec",
        kinds=("exec",),
        summary="process executions, with argv and the result of failed ones",
        hooks=(
            hook("execve", tracepoint("syscalls/sys_enter_execve", "handle_execve_enter")),
            hook("execveat", tracepoint("syscalls/sys_enter_execveat", "handle_execveat_enter")),
            hook("exec", tracepoint("sched/sched_process_exec", "handle_sched_exec")),
            hook("execve_ret", tracepoint("syscalls/sys_exit_execve", "handle_execve_exit")),
            hook("execveat_ret", tracepoint("syscalls/sys_exit_execveat", "handle_execveat_exit")),
            # the file the exec opened, resolved by the kernel (a script's
            # own path; the file a failed exec tried), where BPF-LSM works
            hook(
                "exec_file",
                Attach("lsm", "bprm_check_security", ("handle_bprm_check",)),
                optional=True,
            ),
        ),
        finish=_finish,
        describe=_describe,
    )
)
