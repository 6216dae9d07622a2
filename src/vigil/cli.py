"""`vigil` commands.  Every error a user can cause ends as one line and exit 1
(usage errors: exit 2); tracebacks are for bugs only."""

from __future__ import annotations

import functools
import itertools
import logging
import re
import sys
import time

import click
import orjson

from . import (
    __version__,
    kernel,
    listeners,
    loader,
    recorder,
    sensors,
    summaries,
    tools,
    watchlist,
)
from .agent import Agent, Batch
from .errors import ConfigError, VigilError
from .outputs.sinks import JsonSink, StatusLine, StoreSink, TableSink
from .outputs.store import Store
from .paths import DEFAULT_DB
from .process import ProcessTable
from .table import Column, TablePrinter, clock_time
from .tools import live

log = logging.getLogger("vigil")


def _setup_logging(verbose: int) -> None:
    logging.basicConfig(format="vigil: %(message)s", level=logging.WARNING)
    # libbpf's own lines are folded into our errors; show them only on -v
    libbpf_level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.CRITICAL
    logging.getLogger("vigil.libbpf").setLevel(libbpf_level)
    if verbose:
        logging.getLogger("vigil").setLevel(logging.INFO if verbose == 1 else logging.DEBUG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More detail (libbpf's log with -vv).")
@click.version_option(__version__, prog_name="vigil")
def cli(verbose: int) -> None:
    """Vigil: host security monitoring with CO-RE eBPF."""
    _setup_logging(verbose)


# -- shared options ----------------------------------------------------------------------
def _db_option(f):
    return click.option(
        "--db", "db_path", default=DEFAULT_DB, show_default=True, help="Event store (SQLite)."
    )(f)


# -- monitor -------------------------------------------------------------------------------
# `vigil monitor` and `vigil events` show events the same way.
EVENT_COLUMNS = [
    Column("TIME", 8, clock_time),
    Column("KIND", 12, lambda ev: ev["kind"]),
    Column("PID", 7, lambda ev: ev["pid"]),
    Column("PPID", 7, lambda ev: ev["ppid"]),
    Column("COMM", 16, lambda ev: ev["comm"]),
    Column("DETAIL", 0, lambda ev: _describe(ev)),
]


@functools.cache
def _describers() -> dict:
    return {k: s.describe for s in sensors.all_sensors().values() for k in s.kinds if s.describe}


def _describe(ev: dict) -> str:
    fn = _describers().get(ev["kind"])
    return fn(ev) if fn is not None else ""


@cli.command()
@_db_option
@click.option("--sensor", "sensor_names", multiple=True, help="Only these sensors (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
@click.option("-q", "--quiet", is_flag=True, help="Print no events (status lines only).")
@click.option(
    "--status-interval",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds between status lines on stderr.",
)
@click.option("--duration", type=float, help="Stop after this many seconds.")
@click.option(
    "--summary",
    "summary_specs",
    multiple=True,
    metavar="NAME=SPEC",
    help="An in-kernel counter to keep (an argdist -C spec; NAME= drops a default).",
)
@click.option("--no-summaries", is_flag=True, help="Keep no in-kernel counters.")
@click.option(
    "--summary-interval",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds between counter flushes to the store.",
)
@watchlist.watch_options
@live.ring_options
def monitor(
    db_path,
    sensor_names,
    as_json,
    quiet,
    status_interval,
    duration,
    summary_specs,
    no_summaries,
    summary_interval,
    watch,
    watch_file,
    ring_mb,
    latency,
):
    """Run every sensor this kernel supports; store events and show them live."""
    options = watchlist.sensor_options(watch, watch_file)
    names = list(sensor_names) or _available_sensors()
    specs = {} if no_summaries else summaries.parse_option(summary_specs)
    store = Store(db_path)
    sinks = []
    try:
        # counters flush into the store: close them before it (sinks close in order)
        if specs:
            sinks.append(summaries.SummarySink(store, specs, summary_interval))
        sinks.append(StoreSink(store))
        session = loader.Session(
            names, ring_bytes=ring_mb << 20, monitor=True, sensor_options=options
        )
    except BaseException:
        for sink in sinks:
            sink.close()
        if not sinks:
            store.close()
        raise
    with session:
        if not quiet:
            sinks.append(JsonSink() if as_json else TableSink(TablePrinter(EVENT_COLUMNS)))
        sinks.append(StatusLine(status_interval))
        table = ProcessTable()
        table.seed()
        agent = Agent(session, sinks, processes=table, poll_interval=latency)
        # sockets already bound or listening: the picture from the first second
        snapshot_kinds = {"bind", "listen"} & {k for s in session.sensors for k in s.kinds}
        if snapshot_kinds:
            agent.inject(listeners.snapshot_events(snapshot_kinds, processes=table))
        stats = agent.run(
            duration, on_ready=lambda: live.ready(f"monitoring {', '.join(names)} into {db_path}")
        )
    stored = sum(store.stored.values())
    click.echo(f"vigil: {stored} events stored in {db_path}", err=True)
    live.finish(stats)


def _available_sensors() -> list[str]:
    """Every sensor this kernel can host; the others are named and skipped."""
    names = []
    for name, sensor in sensors.all_sensors().items():
        try:
            loader.choose(sensor)
        except VigilError as err:
            click.echo(f"vigil: skipping {err}", err=True)
            continue
        names.append(name)
    return names


# -- record / report ----------------------------------------------------------------
@cli.command()
@click.option("-o", "--output", "path", required=True, help="Recording file to write.")
@click.option("--sensor", "sensor_names", multiple=True, help="Only these sensors (repeatable).")
@click.option("--duration", type=float, help="Stop after this many seconds.")
@click.option(
    "--all-events",
    is_flag=True,
    help="Every event, as live tools see them (no monitor de-duplication, e.g. of capable).",
)
@live.ring_options
def record(path, sensor_names, duration, all_events, ring_mb, latency):
    """Record raw events to a file at the lowest cost; decode with `vigil report`."""
    import signal

    names = list(sensor_names) or _available_sensors()
    stop = {"now": False}
    deadline = None if duration is None else time.monotonic() + duration

    def should_stop() -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            stop["now"] = True
        return stop["now"]

    def on_signal(*_):
        stop["now"] = True

    session = loader.Session(names, ring_bytes=ring_mb << 20, monitor=not all_events)
    with session:
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            live.ready(f"recording {', '.join(names)} into {path}")
            written = recorder.record(session, path, should_stop, latency)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        stats = session.kernel_stats()
    total = sum(s["emitted"] for s in stats.values())
    click.echo(f"vigil: {total} events ({written} bytes) recorded in {path}", err=True)
    live.finish(stats)


@cli.command()
@click.argument("path")
@click.option("--kind", "kinds", multiple=True, help="Only this kind (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (docs/events.md).")
def report(path, kinds, as_json):
    """Decode a recording made by `vigil record`."""
    table = recorder.report_table()
    wanted = set(kinds)
    batches = recorder.replay(path, table)
    first = next(batches, [])  # a bad file fails here, before any output
    sink = JsonSink() if as_json else TableSink(TablePrinter(EVENT_COLUMNS))
    for events in itertools.chain([first], batches):
        table.enrich(events)
        if wanted:
            events = [ev for ev in events if ev["kind"] in wanted]
        if events:
            sink.write(Batch(events))


# -- events ----------------------------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> int:
    """'10m', '2h', '90s', '1d' ago, or an ISO time -> Unix ns."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if m:
        return time.time_ns() - int(float(m.group(1)) * _UNITS[m.group(2)] * 1e9)
    try:
        from datetime import datetime

        return int(datetime.fromisoformat(text).timestamp() * 1e9)
    except ValueError:
        raise ConfigError(f"--since {text!r}: use 30s, 10m, 2h, 1d or an ISO time") from None


@cli.command()
@_db_option
@click.option("--since", help="Only events newer than this (10m, 2h, ISO time).")
@click.option("--kind", "kinds", multiple=True, help="Only this kind (repeatable): exec, fork, ...")
@click.option("--pid", type=int, help="Only this process id.")
@click.option("--comm", help="Only this command name (exact).")
@click.option("-n", "--limit", default=100, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="JSON lines, the stored form.")
def events(db_path, since, kinds, pid, comm, limit, as_json):
    """Query stored events, newest first."""
    store = Store(db_path, readonly=True)
    try:
        rows = store.query(
            since_ns=parse_since(since) if since else None,
            kinds=kinds,
            pid=pid,
            comm=comm,
            limit=limit,
        )
    finally:
        store.close()
    if as_json:
        out = sys.stdout
        for row in rows:
            out.write(row + "\n")
        return
    printer = TablePrinter(EVENT_COLUMNS)
    printer.header()
    if rows:
        printer.rows([orjson.loads(r) for r in rows])


# -- summaries ----------------------------------------------------------------------
@cli.command("summaries")
@_db_option
@click.option("--since", help="Only intervals newer than this (10m, 2h, 7d, ISO time).")
@click.option("--name", "names", multiple=True, help="Only this summary (repeatable).")
@click.option("-T", "--top", default=20, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Every interval, as stored.")
def summaries_cmd(db_path, since, names, top, as_json):
    """In-kernel counters kept by `vigil monitor`, summed over time."""
    store = Store(db_path, readonly=True)
    try:
        rows = store.summaries(since_ns=parse_since(since) if since else None, names=names)
    finally:
        store.close()
    if as_json:
        for ts, interval, name, spec, counts in rows:
            line = {
                "ts_ns": ts,
                "interval_ns": interval,
                "name": name,
                "spec": spec,
                "counts": counts,
            }
            click.echo(orjson.dumps(line).decode())
        return
    if not rows:
        click.echo("no summaries stored yet")
        return
    span = (rows[-1][0] - rows[0][0] + rows[0][1]) / 1e9
    for name, pairs in summaries.totals(rows).items():
        click.echo(f"{name}: {_spec_of(rows, name)}  ({span:.0f}s)")
        printer = TablePrinter(
            [
                Column("COUNT", 10, lambda kn: kn[1], right=True),
                Column("KEY", 0, lambda kn: _key_text(kn[0])),
            ]
        )
        printer.header()
        printer.rows(pairs[:top])
        click.echo("")


def _spec_of(rows, name: str) -> str:
    return next(spec for _t, _i, n, spec, _c in reversed(rows) if n == name)


def _key_text(key) -> str:
    if isinstance(key, dict):
        return ", ".join(f"{k} = {v}" for k, v in key.items())
    return str(key)


# -- status ---------------------------------------------------------------------------------
@cli.command()
@_db_option
@click.option("--json", "as_json", is_flag=True)
def status(db_path, as_json):
    """Events/s, stored and lost per sensor, as the running agent last reported."""
    store = Store(db_path, readonly=True)
    try:
        rows = store.status()
        total = store.count()
        stopped = store.get_meta("agent") == "stopped"
    finally:
        store.close()
    if as_json:
        click.echo(orjson.dumps({"events": total, "sensors": rows}).decode())
        return
    if not rows:
        click.echo(f"no status in {db_path} yet ({total} events stored)")
        return
    age = (time.time_ns() - max(r["updated_ns"] for r in rows)) / 1e9
    if stopped:
        state = f"stopped {age:.0f}s ago"
    else:
        state = "running" if age < 15 else f"not running (last report {age:.0f}s ago)"
    click.echo(f"agent: {state}; {total} events in {db_path}")
    printer = TablePrinter(
        [
            Column("KIND", 12, lambda r: r["kind"]),
            Column("EVENTS/S", 9, lambda r: f"{r['rate']:.1f}", right=True),
            Column("EMITTED", 10, lambda r: r["emitted"], right=True),
            Column("STORED", 10, lambda r: r["stored"], right=True),
            Column("LOST", 8, lambda r: r["lost"], right=True),
            Column("DROPPED", 8, lambda r: r["dropped"], right=True),
            Column("PARTIAL", 8, lambda r: r["partial"], right=True),
        ]
    )
    printer.header()
    printer.rows(rows)


# -- doctor ---------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--refresh", is_flag=True, help="Probe again instead of using this boot's cache.")
def doctor(as_json, refresh):
    """What this kernel offers, and which attach point each sensor uses."""
    problems = []
    for mount in (kernel.ensure_tracefs, kernel.ensure_bpffs):
        try:
            mount()
        except VigilError as err:
            problems.append(str(err))
    probes = kernel.probe_all(refresh=refresh)
    choices, unavailable = [], {}
    for name, sensor in sensors.all_sensors().items():
        try:
            choices.extend(loader.choose(sensor))
        except VigilError as err:
            unavailable[name] = str(err)
    report = {
        "kernel": kernel.release(),
        "btf": kernel.has_btf(),
        "mounts": kernel.mounts(),
        "cgroup2": kernel.cgroup2_root(),
        "features": {p.feature: {"ok": p.ok, "detail": p.detail} for p in probes.values()},
        "sensors": [c.__dict__ for c in choices],
        "unavailable": unavailable,
        "problems": problems,
    }
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"kernel   {report['kernel']}")
    click.echo(f"BTF      {'yes' if report['btf'] else 'no'} (/sys/kernel/btf/vmlinux)")
    for fs, ok in report["mounts"].items():
        click.echo(f"{fs:<8} {'mounted' if ok else 'NOT mounted'}")
    click.echo(f"cgroup2  {report['cgroup2'] or 'not mounted'}")
    click.echo("")
    features = TablePrinter(
        [
            Column("ATTACH", 11, lambda p: p.feature),
            Column("WORKS", 5, lambda p: "yes" if p.ok else "no"),
            Column("WHY NOT", 0, lambda p: p.detail),
        ]
    )
    features.header()
    features.rows(list(probes.values()))
    click.echo("")
    printer = TablePrinter(
        [
            Column("SENSOR", 8, lambda c: c.sensor),
            Column("HOOK", 13, lambda c: c.hook),
            Column("ATTACH", 11, lambda c: c.feature),
            Column("TARGET", 34, lambda c: c.target),
            Column("ALSO POSSIBLE ELSEWHERE", 0, lambda c: _alternatives(c)),
        ]
    )
    printer.header()
    printer.rows(choices)
    for name, why in unavailable.items():
        click.echo(f"{name}: unavailable: {why}")
    for p in problems:
        click.echo(f"problem: {p}")


def _alternatives(choice: loader.Choice) -> str:
    hook = next(h for h in sensors.get(choice.sensor).hooks if h.name == choice.hook)
    others = [
        f"{a.feature} {a.target}"
        for a in hook.alternatives
        if (a.feature, a.target) != (choice.feature, choice.target)
    ]
    return ", ".join(others)


for _command in tools.commands():
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="vigil", standalone_mode=False)
    except click.exceptions.Abort:
        return 130
    except click.UsageError as err:
        cmd = err.ctx.command_path if err.ctx else "vigil"
        click.echo(f"{cmd}: error: {err.format_message()} (see {cmd} --help)", err=True)
        return 2
    except click.ClickException as err:
        click.echo(f"vigil: error: {err.format_message()}", err=True)
        return err.exit_code
    except VigilError as err:
        click.echo(f"vigil: error: {err}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`vigil events | head`): not an error
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
