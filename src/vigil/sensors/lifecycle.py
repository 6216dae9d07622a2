"""fork and exit: process lifetimes, which keep the process table current."""

from . import Attach, Sensor, hook, register, tracepoint

FORK = register(
    Sensor(
        name="fork",
        object="lifecycle",
        kinds=("fork",),
        summary="new processes (not threads)",
        describe=lambda ev: f"child {ev['child_pid']}",
        hooks=(
            hook(
                "fork",
                Attach("tp_btf", "sched_process_fork", ("fork_btf",)),
                Attach("raw_tp", "sched_process_fork", ("fork_raw",)),
            ),
        ),
    )
)

EXIT = register(
    Sensor(
        name="exit",
        object="lifecycle",
        kinds=("exit",),
        summary="process exits, with status and lifetime",
        describe=lambda ev: (
            (f"signal {ev['signal']}" if ev["signal"] else f"code {ev['exit_code']}")
            + f" after {ev['duration_ns'] / 1e9:.3f}s"
        ),
        hooks=(hook("exit", tracepoint("sched/sched_process_exit", "handle_exit")),),
    )
)
