"""bpf: BPF programs loaded and attached, by any process (bpf/bpf.bpf.c)."""

import os

from ..encoding import display
from . import Attach, Sensor, hook, register, result_text


def _finish(ev: dict) -> None:
    ev["by_vigil"] = bool(ev["by_vigil"])


def _describe(ev: dict) -> str:
    text = f"{ev['cmd']} {ev['prog_type']}"
    if ev["prog_name"]:
        text += f" {display(ev['prog_name'])}"
    if ev["prog_id"]:
        text += f" id {ev['prog_id']}"
    if ev["attach_to"]:
        text += f" -> {display(ev['attach_to'])}"
    # 0 (cgroup_inet_ingress) is also "none given" for a load; raw_tp has none
    shown = ev["cmd"] in ("prog_attach", "link_create") or (
        ev["cmd"] == "prog_load" and ev["attach_type"] not in (0, "cgroup_inet_ingress")
    )
    if shown:
        text += f" ({ev['attach_type']})"
    if ev["by_vigil"]:
        text += " [vigil]"
    return f"{text} {result_text(ev['ret'])}"


SENSOR = register(
    Sensor(
        name="bpf",
        object="bpf",
        kinds=("bpf",),
        summary="BPF program loads and attaches (prog_load, prog_attach, link_create, raw_tp)",
        hooks=(
            hook(
                "bpf",
                # the kernel's copy of the attr, for failed calls too
                Attach("lsm", "bpf", ("bpf_lsm_bpf", "bpf_enter", "bpf_exit")),
                Attach("tracepoint", "syscalls/sys_enter_bpf", ("bpf_enter", "bpf_exit")),
            ),
        ),
        finish=_finish,
        describe=_describe,
        # our own loads are reported too, marked: the pid of the loading process
        rodata={"agent_pid": os.getpid},
    )
)
