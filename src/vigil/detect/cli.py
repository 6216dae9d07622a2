"""`vigil rules check|test` and `vigil alerts`."""

from __future__ import annotations

import collections
import os
import sys

import click
import orjson

from .. import options as opt
from ..encoding import from_json
from ..errors import ConfigError
from ..outputs.store import Store
from ..paths import DEFAULT_DB
from ..table import Column, TablePrinter
from . import output

# pySigma takes a while to import: only the commands that detect pay for it

_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)


def default_rules() -> list[str]:
    """$VIGIL_RULES (colon-separated), else the shipped pack (rules/)."""
    env = os.environ.get("VIGIL_RULES")
    if env:
        return [p for p in env.split(":") if p]
    pack = os.path.join(_ROOT, "rules")
    return [pack] if os.path.isdir(pack) else []


def rules_options(f):
    """--rules/--no-rules/--strict/--alert-window for commands that detect."""
    f = click.option(
        "--alert-window",
        default=60.0,
        show_default=True,
        type=opt.seconds(0.001, opt.MAX_INTERVAL),
        help="Repeats of an alert within this many seconds are folded into it.",
    )(f)
    f = click.option("--strict", is_flag=True, help="Refuse to start if any rule is invalid.")(f)
    f = click.option("--no-rules", is_flag=True, help="Detect nothing.")(f)
    return click.option(
        "--rules",
        "rule_paths",
        multiple=True,
        metavar="PATH",
        help="Sigma rule file or directory (repeatable; default: $VIGIL_RULES or the shipped rules/).",
    )(f)


def make_detector(rule_paths, no_rules, strict, window, processes=None):
    from .stage import Detector

    if no_rules:
        return None
    paths = list(rule_paths) or default_rules()
    if not paths:
        return None
    for p in paths:
        if not os.path.exists(p):
            raise ConfigError(f"--rules {p}: no such file or directory")
    return Detector(paths, processes=processes, strict=strict, window=window)


def baseline_options(f):
    f = click.option("--no-baseline", is_flag=True, help="Learn no baselines.")(f)
    return click.option(
        "--baseline-learn",
        default="1d",
        show_default=True,
        metavar="DURATION",
        help="How long each baseline kind learns before new entries raise alerts (30s, 10m, 2h, 7d).",
    )(f)


def parse_duration(text: str) -> float:
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if not m:
        raise ConfigError(f"duration {text!r}: use 30s, 10m, 2h, 7d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    seconds = float(m.group(1)) * unit
    if not seconds <= opt.MAX_DURATION:  # also inf, from a long enough number
        raise ConfigError(f"duration {text!r}: at most {opt.MAX_DURATION / 86400:.0f} days")
    return seconds


def make_baseline(store, learn: str, window: float):
    from .baseline import Baseline

    return Baseline(store, parse_duration(learn), window=window)


@click.group("rules")
def rules_group():
    """Sigma rules: check what can fire here, backtest them."""


def _verdict_row(r) -> dict:
    return {
        "path": r.path,
        "id": r.id,
        "title": r.title,
        "logsource": r.logsource,
        "verdict": r.verdict,
        "reasons": r.reasons,
    }


@rules_group.command("check")
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per rule.")
@click.option("-q", "--quiet", is_flag=True, help="Counts only.")
def check(paths, as_json, quiet):
    """Verdict for every rule: can-fire, degraded, never-fires (why), invalid."""
    from . import ruleset
    from .compile import CAN_FIRE, DEGRADED, INVALID, NEVER_FIRES

    for p in paths:
        if not os.path.exists(p):
            raise ConfigError(f"{p}: no such file or directory")
    _set, rules = ruleset.load(paths)
    if as_json:
        out = sys.stdout
        for r in rules:
            out.write(orjson.dumps(_verdict_row(r)).decode() + "\n")
        return
    if not quiet:
        printer = TablePrinter(
            [
                Column("VERDICT", 11, lambda r: r.verdict),
                Column("LOGSOURCE", 18, lambda r: r.logsource or "-"),
                Column("RULE", 44, lambda r: os.path.basename(r.path)),
                Column("WHY", 0, lambda r: "; ".join(r.reasons)),
            ]
        )
        printer.header()
        printer.rows(rules)
        click.echo("")
    counts = collections.Counter((r.logsource or "-", r.verdict) for r in rules)
    verdicts = (CAN_FIRE, DEGRADED, NEVER_FIRES, INVALID)
    click.echo(f"{'LOGSOURCE':<20}" + "".join(f"{v:>13}" for v in verdicts))
    for cat in sorted({c for c, _ in counts}):
        click.echo(f"{cat:<20}" + "".join(f"{counts[(cat, v)]:>13}" for v in verdicts))
    total = collections.Counter(r.verdict for r in rules)
    click.echo(f"{'total':<20}" + "".join(f"{total[v]:>13}" for v in verdicts))


def _events_from(path: str):
    """Batches of events from a recording (`vigil record`) or JSON lines."""
    from .. import recorder

    try:
        with open(path, "rb") as f:
            head = f.read(len(recorder.MAGIC))
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from err
    if head == recorder.MAGIC:
        table = recorder.report_table()
        for events in recorder.replay(path, table):
            table.enrich(events)
            yield events, table
        return
    with open(path, "rb") as f:
        batch = []
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ev = from_json(line)
            except ValueError:
                raise ConfigError(f"{path}:{n}: not a JSON event line") from None
            if isinstance(ev, dict) and ev.get("kind") == "alert":
                continue  # `vigil monitor --json` output holds alerts too
            why = _not_an_event(ev)
            if why:
                raise ConfigError(f"{path}:{n}: not a Vigil event ({why})")
            batch.append(ev)
    yield batch, _replay_table(batch)


_HEADER = ("ts_ns", "pid", "ppid", "uid")


def _not_an_event(ev) -> str | None:
    """Why a parsed JSON line cannot be matched as an event (docs/events.md), or None."""
    if not isinstance(ev, dict):
        return "not an object"
    if not isinstance(ev.get("kind"), str):
        return "no kind"
    for name in _HEADER:
        if type(ev.get(name)) is not int:
            return f"{name} missing or not an integer"
    for name in ("exe", "comm", "filename", "line"):
        if name in ev and not isinstance(ev[name], str):
            return f"{name} is not a string"
    args = ev.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return "args is not a list of strings"
    anc = ev.get("ancestors", [])
    if not isinstance(anc, list) or not all(
        isinstance(a, dict) and isinstance(a.get("exe", ""), str) for a in anc
    ):
        return "ancestors is not a list of objects"
    return None


def _replay_table(events: list[dict]):
    """A process table kept by the events alone (parents' argv for ParentCommandLine)."""
    from ..process import ProcessTable

    table = ProcessTable(read_proc=False)
    for ev in events:
        update = table._UPDATES.get(ev["kind"])
        if update is not None:
            try:
                update(table, ev)
            except (KeyError, TypeError):
                pass  # an event without the fields: nothing to learn
    return table


def _events_from_db(db: str):
    store = Store(db, readonly=True)
    try:
        # the documented shape: schema 2 keeps each process once and the
        # store's query joins it back into its events (newest first)
        total = store.db.execute("SELECT count(*) FROM events").fetchone()[0]
        rows = store.query(limit=max(total, 1))[::-1]
    finally:
        store.close()
    events = []
    for n, data in enumerate(rows, 1):
        try:
            ev = from_json(data)
        except ValueError:
            raise ConfigError(f"{db}: stored event {n} is not JSON") from None
        why = _not_an_event(ev)
        if why:
            raise ConfigError(f"{db}: stored event {n} is not a Vigil event ({why})")
        events.append(ev)
    yield events, _replay_table(events)


@rules_group.command("test")
@click.argument("rules", nargs=-1, required=True)
@click.option("--events", "events_path", help="A recording (vigil record) or JSON event lines.")
@click.option("--db", "db_path", help="An event store (vigil monitor --db).")
@click.option("--json", "as_json", is_flag=True, help="Alerts as JSON (docs/alerts.md).")
@click.option(
    "--alert-window", default=60.0, show_default=True, type=opt.seconds(0.001, opt.MAX_INTERVAL)
)
def test(rules, events_path, db_path, as_json, alert_window):
    """Backtest: what RULES would have raised on recorded or stored events."""
    from .stage import Detector

    if bool(events_path) == bool(db_path):
        raise click.UsageError("give exactly one of --events FILE or --db DB")
    for p in rules:
        if not os.path.exists(p):
            raise ConfigError(f"{p}: no such file or directory")
    detector = Detector(list(rules), window=alert_window)
    if not len(detector.rules):
        raise ConfigError("none of the rules can fire here (see `vigil rules check`)")
    source = _events_from(events_path) if events_path else _events_from_db(db_path)
    alerts: dict[str, object] = {}
    n = 0
    for events, table in source:
        detector.ctx.processes = table
        n += len(events)
        for a in detector.run(events):
            alerts[a.id] = a
    out = [a.data for a in alerts.values()]
    if as_json:
        for d in out:
            click.echo(orjson.dumps(d).decode())
    else:
        for d in out:
            click.echo(output.headline(d))
        click.echo(f"vigil: {len(out)} alerts from {n} events", err=True)


@click.command("alerts")
@click.option("--db", "db_path", default=DEFAULT_DB, show_default=True, help="Event store.")
@click.option("--since", type=opt.SINCE, help="Only alerts seen since (10m, 2h, ISO time).")
@click.option("--level", "levels", multiple=True, type=click.Choice(output.LEVELS))
@click.option(
    "--rule", "rule_ids", multiple=True, type=opt.TEXT, help="Only this rule id (repeatable)."
)
@click.option("-n", "--limit", default=100, show_default=True, type=opt.COUNT)
@click.option("--json", "as_json", is_flag=True, help="JSON lines (docs/alerts.md).")
def alerts_cmd(db_path, since, levels, rule_ids, limit, as_json):
    """Stored alerts, most recently seen first."""
    store = Store(db_path, readonly=True)
    try:
        rows = output.query(
            store,
            since_ns=since,
            levels=list(levels),
            rules=list(rule_ids),
            limit=limit,
        )
    finally:
        store.close()
    if as_json:
        for d in rows:
            click.echo(orjson.dumps(d).decode())
        return
    printer = TablePrinter(
        [
            Column("LAST SEEN", 20, lambda d: d["last_seen"][:19]),
            Column("LEVEL", 8, lambda d: d.get("rule", {}).get("level", d.get("level", ""))),
            Column("COUNT", 6, lambda d: d["count"], right=True),
            Column("PID", 7, lambda d: d["event"].get("pid", "")),
            Column("COMM", 16, lambda d: d["event"].get("comm", "")),
            Column("ALERT", 0, lambda d: d.get("rule", {}).get("title", d.get("summary", ""))),
        ]
    )
    printer.header()
    printer.rows(rows)


@click.group("baseline")
def baseline_group():
    """Learned baselines: what listens, connects, uses capabilities, starts what."""


def _kind_arg(f):
    from .baseline import KINDS

    return click.argument("kind", required=False, type=click.Choice(sorted(KINDS)))(f)


@baseline_group.command("show")
@_kind_arg
@click.option("--db", "db_path", default=DEFAULT_DB, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def baseline_show(kind, db_path, as_json):
    """What was learned (learned), accepted, and what is new since arming."""
    import time

    from . import baseline

    store = Store(db_path, readonly=True)
    try:
        rows = baseline.rows(store, kind)
        starts = baseline.armed(store)
    finally:
        store.close()
    if as_json:
        for r in rows:
            click.echo(orjson.dumps(r).decode())
        return
    for k, start in sorted(starts.items()):
        if kind in (None, k):
            since = (time.time_ns() - start) / 1e9
            click.echo(f"{k}: learning since {since:.0f}s ago (armed after --baseline-learn)")
    printer = TablePrinter(
        [
            Column("KIND", 15, lambda r: r["kind"]),
            Column("STATE", 9, lambda r: r["state"]),
            Column(
                "ENTRY",
                0,
                lambda r: (
                    "  ".join(
                        str(v)
                        for k, v in r.items()
                        if k not in ("kind", "state", "first_seen_ns", "example")
                    )
                    + f"  ({r['example']})"
                ),
            ),
        ]
    )
    printer.header()
    printer.rows(rows)


@baseline_group.command("accept")
@_kind_arg
@click.option("--db", "db_path", default=DEFAULT_DB, show_default=True)
def baseline_accept(kind, db_path):
    """Accept every new entry (of KIND) as normal (a running monitor: at SIGHUP)."""
    from . import baseline

    store = Store(db_path)
    try:
        n = baseline.accept(store, kind)
    finally:
        store.close()
    click.echo(f"vigil: {n} new entries accepted")


@baseline_group.command("reset")
@_kind_arg
@click.option("--db", "db_path", default=DEFAULT_DB, show_default=True)
def baseline_reset(kind, db_path):
    """Forget what was learned (of KIND): learning starts again."""
    from . import baseline

    store = Store(db_path)
    try:
        n = baseline.reset(store, kind)
    finally:
        store.close()
    click.echo(f"vigil: {n} entries forgotten; learning starts again at the next monitor start")


COMMANDS = [rules_group, alerts_cmd, baseline_group]
