"""fork and exit: process lifetimes, which keep the process table current."""

from . import Hook, Sensor, register

FORK = register(
    Sensor(
        name="fork",
        object="lifecycle",
        kinds=("fork",),
        summary="new processes (not threads)",
        describe=lambda ev: f"child {ev['child_pid']}",
        hooks=(
            Hook(
                "fork",
                (
                    ("fork_btf", "tp_btf", "sched_process_fork"),
                    ("fork_raw", "raw_tp", "sched_process_fork"),
                ),
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
        hooks=(Hook("exit", (("handle_exit", "tracepoint", "sched/sched_process_exit"),)),),
    )
)
