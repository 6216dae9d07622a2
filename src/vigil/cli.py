"""`vigil` commands.  Every error a user can cause ends as one line and exit 1
(usage errors: exit 2); tracebacks are for bugs only."""

from __future__ import annotations

import functools
import logging
import os
import sys

import click
import orjson

from . import (
    __version__,
    config,
    kernel,
    loader,
    pipeline,
    recorder,
    sensors,
    summaries,
    tools,
    watchlist,
)
from . import options as opt
from .config_cmd import config_cmd
from .detect import cli as detect_cli
from .encoding import as_text, display, escape
from .errors import StoreError, VigilError
from .outputs import liveness
from .outputs.store import Store
from .paths import DEFAULT_DB
from .settings import Settings
from .signals import add_unread
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
    # what Vigil writes (store, recordings) holds secrets: nobody else reads it
    os.umask(0o077)
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
@config.config_option
@config.option("store.path", "--db", "db_path")
@click.option(
    "--sensor",
    "sensor_names",
    multiple=True,
    type=opt.TEXT,
    help="Only these sensors (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
@click.option("-q", "--quiet", is_flag=True, help="Print no events (status lines only).")
@config.option("status.interval", "--status-interval")
@click.option("--duration", type=opt.DURATION, help="Stop after this many seconds.")
@click.option(
    "--summary",
    "summary_specs",
    multiple=True,
    metavar="NAME=SPEC",
    help="An in-kernel counter to keep (an argdist -C spec; NAME= drops a default).",
)
@click.option("--no-summaries", is_flag=True, help="Keep no in-kernel counters.")
@detect_cli.rules_options
@detect_cli.baseline_options
@watchlist.watch_options
@config.option("store.backlog_mb", "--store-backlog-mb")
@config.option("log.stop_grace", "--stop-grace")
@config.option("log.dir", "--log-dir", "log_dir")
@config.option("log.budget_mb", "--log-budget-mb")
@config.option("log.segment_mb", "--log-segment-mb")
@config.option("log.analysis_grace", "--analysis-grace")
@config.option("log.analysis_nice", "--analysis-nice")
@config.option("log.storm_rate", "--storm-rate")
@config.option("log.storm_hold", "--storm-hold")
@config.option("summaries.interval", "--summary-interval")
@live.ring_options
@click.pass_context
def monitor(ctx, config_path, summary_specs, no_summaries, as_json, quiet, duration, **given):
    """Run every sensor this kernel supports; store events and show them live.

    Capture copies the ring to the event log (--log-dir); the analysis, a
    lower-priority process, decodes, detects and stores behind it (lag in
    the status line and `vigil status`; docs/eventlog.md).

    Settings come from the config file (--config, default
    /etc/vigil/vigil.toml if it exists; see docs/config.md); options given
    here override it.  SIGHUP re-reads the file."""
    settings, explicit = config.load_for_command(ctx, config_path)
    if no_summaries:
        explicit["summaries.enabled"] = False
    if summary_specs:  # pinned for the run: a reload keeps them
        explicit["summaries.specs"] = {
            **settings.summaries.specs,
            **{n: s for n, _eq, s in (v.partition("=") for v in summary_specs)},
        }
    settings = config.overlay(settings, explicit)
    if summary_specs and not no_summaries:  # a bad spec fails before any sensor loads
        summaries.parse_option(summary_specs, base=config.summary_specs(settings))
    db_path = settings.store.path
    names = list(settings.sensors.enable) or _available_sensors()
    options = watchlist.sensor_options(tuple(settings.sensors.files.watch), given["watch_file"])
    # bad rules (--strict) fail here, in one line, before capture (the analysis loads them)
    detect_cli.make_detector(
        tuple(settings.rules.paths), given["no_rules"], given["strict"], given["alert_window"]
    )
    pipeline.check_monitor(settings)  # the store opens and is ours, before capture
    session = loader.Session(
        names,
        ring_bytes=settings.ring.size_mb << 20,
        latency=settings.ring.latency,
        monitor=True,
        rodata=sensors_rodata(settings, names),
        skip_unloadable=True,
        sensor_options=options,
    )
    _say_skipped(session)
    names = [sensor.name for sensor in session.sensors]
    specs = config.summary_specs(settings, names)  # a default counter goes with its sensor
    if summary_specs and not no_summaries:
        specs = summaries.parse_option(summary_specs, base=specs)
    run = pipeline.Run(
        alert_window=given["alert_window"],
        baseline_learn=given["baseline_learn"],
        no_rules=given["no_rules"],
        strict=given["strict"],
        no_baseline=given["no_baseline"],
        quiet=quiet,
        json=as_json,
        duration=duration,
        summaries=specs,
        sensors=names,
        config_path=config_path,
        explicit=explicit,
    )
    code = pipeline.run_monitor(
        session,
        settings,
        run,
        on_ready=lambda: live.ready(f"monitoring {', '.join(names)} into {db_path}"),
    )
    if code:
        sys.exit(code)


def sensors_rodata(settings, names: list[str]) -> dict[str, int]:
    """The per-sensor settings that are .rodata knobs, for the sensors loaded."""
    out = {}
    if "capable" in names:
        out["unique"] = int(settings.sensors.capable.unique)
    return out


def _store_accounts(store: Store, db_path: str) -> None:
    """Every event the store was handed is stored, dropped or unwritten: if
    any was not stored, say which kinds and why, and fail the command."""
    lost = sum(store.dropped.values()) + sum(store.waiting.values())
    if not lost:
        return
    accounts = "; ".join(
        f"{k} {n} received = {store.stored[k]} stored + {store.dropped[k]} dropped"
        f" + {store.waiting[k]} unwritten"
        for k, n in sorted(store.accepted.items())
        if store.dropped[k] or store.waiting[k]
    )
    click.echo(f"vigil: store: {accounts}", err=True)
    why = store.error or store.last_error or "the store fell behind"
    raise StoreError(f"{lost} events were not stored in {db_path} ({why})")


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


def _say_skipped(session: loader.Session) -> None:
    """One line per sensor the kernel refused; the others run."""
    for name, why in session.skipped.items():
        click.echo(f"vigil: skipping sensor {name}: {why}", err=True)


# -- record / report ----------------------------------------------------------------
@cli.command()
@config.config_option
@click.option("-o", "--output", "path", required=True, help="Recording file to write.")
@click.option(
    "--sensor",
    "sensor_names",
    multiple=True,
    type=opt.TEXT,
    help="Only these sensors (repeatable).",
)
@click.option("--duration", type=opt.DURATION, help="Stop after this many seconds.")
@click.option(
    "--all-events",
    is_flag=True,
    help="Every event, as live tools see them (no monitor de-duplication, e.g. of capable).",
)
@live.ring_options
@click.pass_context
def record(ctx, config_path, path, duration, all_events, **_given):
    """Record raw events to a file at the lowest cost; decode with `vigil report`.

    Sensors, ring size and latency come from the config file (--config;
    docs/config.md) unless given here."""
    settings, _explicit = config.load_for_command(ctx, config_path)
    names = list(settings.sensors.enable) or _available_sensors()
    session = loader.Session(
        names,
        ring_bytes=settings.ring.size_mb << 20,
        latency=settings.ring.latency,
        monitor=not all_events,
        rodata=None if all_events else sensors_rodata(settings, names),
        skip_unloadable=True,
    )
    _say_skipped(session)
    names = [sensor.name for sensor in session.sensors]
    with session:
        done = recorder.record(
            session,
            path,
            settings.ring.latency,
            duration=duration,
            on_ready=lambda: live.ready(f"recording {', '.join(names)} into {path}"),
        )
        stats = session.kernel_stats()
    add_unread(stats, done.unread)
    total = sum(s["emitted"] for s in stats.values())
    click.echo(f"vigil: {total} events ({done.written} bytes) recorded in {path}", err=True)
    live.finish(stats)


@cli.command()
@click.argument("path")
@click.option("--kind", "kinds", multiple=True, type=opt.TEXT, help="Only this kind (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (docs/events.md).")
@detect_cli.rules_options
def report(path, kinds, as_json, rule_paths, no_rules, strict, alert_window):
    """Decode a recording made by `vigil record` (and detect, as monitor does).

    Exit status: 0 when the whole recording was read; 1 on an error (one
    line, nothing decoded) or when the recording is damaged: every complete,
    intact chunk is still printed, and one warning line says what was cut
    or skipped.
    """
    settings = config.overlay(Settings(), {"rules.paths": list(rule_paths)})
    run = pipeline.Run(
        alert_window=alert_window,
        no_rules=no_rules,
        strict=strict,
        json=as_json,
        recording=path,
        kinds=list(kinds),
    )
    pipe = pipeline.assemble(settings, run)
    pipeline.replay_all(pipe)
    replay = pipe.source.replay
    said = replay.damage.summary()
    if said:
        level = "warning" if replay.damage.damaged else "note"
        click.echo(f"vigil: {level}: {path}: {said}", err=True)
    if replay.damage.damaged:
        return 1
    return None


# -- events ----------------------------------------------------------------------------------
@cli.command()
@_db_option
@click.option("--since", type=opt.SINCE, help="Only events newer than this (10m, 2h, ISO time).")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=opt.TEXT,
    help="Only this kind (repeatable): exec, fork, ...",
)
@click.option("--pid", type=opt.PID, help="Only this process id.")
@click.option("--comm", type=opt.COMM, help="Only this command name (exact; \\xHH for a byte).")
@click.option("-n", "--limit", default=100, show_default=True, type=opt.COUNT)
@click.option("--json", "as_json", is_flag=True, help="JSON lines, the stored form.")
def events(db_path, since, kinds, pid, comm, limit, as_json):
    """Query stored events, newest first."""
    store = Store(db_path, readonly=True)
    try:
        rows = store.query(
            since_ns=since,
            kinds=kinds,
            pid=pid,
            comm=None if comm is None else escape(comm),  # stored escaped (docs/events.md)
            limit=limit,
        )
    finally:
        store.close()
    _report_skipped(store)
    if as_json:
        out = sys.stdout
        for row in rows:
            out.write(row + "\n")
        return
    shown = [orjson.loads(r) for r in rows]
    unshown = _StoredDetail()
    printer = TablePrinter([*EVENT_COLUMNS[:-1], Column("DETAIL", 0, unshown.describe)])
    printer.header()
    if shown:
        printer.rows(shown)
    if unshown.count:
        click.echo(f"vigil: {unshown.count} stored events have a malformed DETAIL", err=True)


class _StoredDetail:
    """DETAIL of a stored event: its header was checked on reading (outputs/
    rows.py), its kind's own fields were not, and an altered store may hold
    anything there.  Such a detail reads "?" and is counted."""

    def __init__(self) -> None:
        self.count = 0

    def describe(self, ev: dict) -> str:
        try:
            return _describe(ev)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError):
            self.count += 1
            return "?"


def _report_skipped(store: Store) -> None:
    if store.skipped:
        click.echo(
            f"vigil: {as_text(store.path)}: {store.skipped} malformed rows skipped"
            " (not as the agent writes them: was the store altered?)",
            err=True,
        )


# -- summaries ----------------------------------------------------------------------
@cli.command("summaries")
@_db_option
@click.option(
    "--since", type=opt.SINCE, help="Only intervals newer than this (10m, 2h, 7d, ISO time)."
)
@click.option(
    "--name", "names", multiple=True, type=opt.TEXT, help="Only this summary (repeatable)."
)
@click.option("-T", "--top", default=20, show_default=True, type=opt.COUNT)
@click.option("--json", "as_json", is_flag=True, help="Every interval, as stored.")
def summaries_cmd(db_path, since, names, top, as_json):
    """In-kernel counters kept by `vigil monitor`, summed over time."""
    store = Store(db_path, readonly=True)
    try:
        rows = store.summaries(since_ns=since, names=names)
    finally:
        store.close()
    _report_skipped(store)
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
        record = liveness.read_record(store)
    finally:
        store.close()
    _report_skipped(store)
    state, line = liveness.describe(record)
    if as_json:
        # state: running, died, stopped or unknown (recorded_state: as written)
        recorded = (record or {}).get("state")
        agent = {**(record or {}), "recorded_state": recorded, "state": state, "detail": line}
        click.echo(orjson.dumps({"events": total, "sensors": rows, "agent": agent}).decode())
        return
    click.echo(f"agent: {line}; {total} events in {as_text(db_path)}")
    lag = (record or {}).get("lag") or {}
    if isinstance(lag, dict) and lag.get("bytes"):
        click.echo(
            f"analysis lag: {lag.get('events', 0)} events, {lag.get('seconds', 0):.1f}s behind "
            "capture"
        )
    discarded = (record or {}).get("discarded") or {}
    if isinstance(discarded, dict) and discarded:
        detail = ", ".join(f"{as_text(str(k))} {n}" for k, n in sorted(discarded.items()))
        click.echo(f"event log full: discarded unanalysed (lost): {detail}")
    # not yet written (or, once stopped, never written), per kind
    store_state = (record or {}).get("store") or {}
    waiting = (record or {}).get("unwritten") or store_state.get("waiting") or {}
    if not rows:
        click.echo(f"no status in {as_text(db_path)} yet")
        return
    printer = TablePrinter(
        [
            Column("KIND", 12, lambda r: r["kind"]),
            Column("EVENTS/S", 9, lambda r: f"{r['rate']:.1f}", right=True),
            Column("EMITTED", 10, lambda r: r["emitted"], right=True),
            Column("STORED", 10, lambda r: r["stored"], right=True),
            Column("LOST", 8, lambda r: r["lost"], right=True),
            Column("DROPPED", 8, lambda r: r["dropped"], right=True),
            Column("WAITING", 8, lambda r: waiting.get(r["kind"], 0), right=True),
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
    # A hook can exist and the verifier still refuse the program: load for real.
    try:
        usable = {c.sensor for c in choices}
        with loader.Session(sorted(usable), ring_bytes=4096, skip_unloadable=True) as trial:
            for name, why in trial.skipped.items():
                unavailable[name] = f"does not load: {why}"
    except VigilError as err:
        problems.append(f"sensors not loaded to check them: {err}")
    choices = [c for c in choices if c.sensor not in unavailable]
    # optional hooks this kernel cannot give (the sensor runs without their detail)
    chosen = {(c.sensor, c.hook) for c in choices}
    without = [
        loader.Choice(sensor.name, h.name, "-", "(not on this kernel)", ())
        for sensor in sensors.all_sensors().values()
        if sensor.name not in unavailable
        for h in sensor.hooks
        if h.optional and (sensor.name, h.name) not in chosen
    ]
    report = {
        "kernel": kernel.release(),
        "btf": kernel.has_btf(),
        "mounts": kernel.mounts(),
        "cgroup2": kernel.cgroup2_root(),
        "features": {p.feature: {"ok": p.ok, "detail": p.detail} for p in probes.values()},
        "sensors": [c.__dict__ for c in choices],
        "unavailable": unavailable,
        "optional_hooks_missing": [
            {"sensor": c.sensor, "hook": c.hook, "elsewhere": _alternatives(c)} for c in without
        ],
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
    printer.rows(without)
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


for _command in [*tools.commands(), *detect_cli.COMMANDS]:
    cli.add_command(_command)
cli.add_command(config_cmd)


def _null_missing_streams() -> None:
    """A process started with stdout or stderr closed (`vigil execsnoop >&-`)
    has None for them: write there to /dev/null, as `>/dev/null` would,
    rather than fail on the first line (the fd would be reused by the
    next file we open, and our output would land in it)."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is None:
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, "w", closefd=False))  # noqa: SIM115


def main(argv: list[str] | None = None) -> int:
    _null_missing_streams()
    try:
        # a command may return its exit status (`report`: 1 for a damaged recording)
        rc = cli.main(args=argv, prog_name="vigil", standalone_mode=False)
    except click.exceptions.Abort:
        return 130
    except click.UsageError as err:
        cmd = err.ctx.command_path if err.ctx else "vigil"
        _error_line(f"{cmd}: error: {err.format_message()} (see {cmd} --help)")
        return 2
    except click.ClickException as err:
        _error_line(f"vigil: error: {err.format_message()}")
        return err.exit_code
    except VigilError as err:
        _error_line(f"vigil: error: {err}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`vigil events | head`): not an error
        sys.stderr.close()
        return 0
    except Exception as err:
        # A bug: still one line for the user, the traceback only with -v.
        # The fuzz tests (tests/test_fuzz_cli.py) fail on this line.
        if log.isEnabledFor(logging.INFO):
            log.exception("internal error")
        what = " ".join(str(err).split())[:200]
        _error_line(f"vigil: internal error: {type(err).__name__}: {what}; run with -v for details")
        return INTERNAL_ERROR
    return rc if type(rc) is int else 0


def _error_line(text: str) -> None:
    """An error as exactly one line: what the user typed may hold newlines,
    control characters or bytes that are not UTF-8 (see encoding.display)."""
    click.echo(display(as_text(text)), err=True)


INTERNAL_ERROR = 70  # EX_SOFTWARE (sysexits.h): distinct from user errors (1, 2)


if __name__ == "__main__":
    sys.exit(main())
