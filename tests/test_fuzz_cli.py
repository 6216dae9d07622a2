"""Property-based fuzzing of every command-line argument and of the store's
rows (issue 8: "fuzz every CLI argument and every file Vigil reads").

The property, for every generated input: an exit code in {0, 1, 2}, at
most one line on stderr for an error (two warnings at most otherwise), no
traceback, and never main()'s "internal error" line, which would mean a
bug hidden rather than fixed.

Commands that only read (events, status, summaries, doctor --json) run
for real, in this process.  Commands that load BPF are fuzzed up to the
point where they would load: their options are parsed (click's
make_context, which runs every type check) and their spec, regex and
port parsers are called directly.  Recordings are fuzzed with the recorder.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import tempfile

import click
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inprocess import assert_user_facing, event, make_store, run
from vigil import cli, options, summaries
from vigil.argdist import parse
from vigil.errors import ConfigError, VigilError
from vigil.outputs import store as store_module
from vigil.tools import live, tcpconnect

# VIGIL_FUZZ_EXAMPLES=2000 for a longer hunt; CI runs the same examples each
# time (a failure there is then a regression, not a new find by chance).
FUZZ = settings(
    max_examples=int(os.environ.get("VIGIL_FUZZ_EXAMPLES", "60")),
    derandomize=os.environ.get("CI") == "true",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- what a user can type --------------------------------------------------------------------
SPECIAL = [
    "nan", "NaN", "-nan", "inf", "-inf", "+inf", "infinity", "1e400", "-1e400", "1e-400",
    "0", "-0", "-1", "0.0", "0.05", "0.1", "1", "10", "1024", "1025", "4194303", "4194304",
    str(2**31), str(2**32), str(2**63 - 1), str(2**63), str(2**64), str(-(2**63) - 1),
    "9" * 400, "0x10", "1_000", "", " ", "\t", "\n", "\x1b[31m", "\\xff", "\\\\", "-", "--",
    "10m", "1.5h", "2w", "99999999999999999999d", "9" * 400 + "d", "1e3s",
    "9999-12-31T23:59:59", "0001-01-01", "1970-01-01T00:00:00+00:00", "2262-04-12",
    "2026-11-30T08:00", "exec", "fork", "capabilities", "t:capability:cap_capable()",
]  # fmt: skip

# Linux hands Python any byte string but NUL, non-UTF-8 bytes as surrogates
RAW = st.binary(max_size=24).map(lambda b: os.fsdecode(b.replace(b"\0", b"\1")))
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=24)
VALUES = st.one_of(
    st.sampled_from(SPECIAL),
    RAW,
    TEXT,
    st.integers().map(str),
    st.floats().map(repr),
)


def _options(cmd: click.Command, skip: tuple[str, ...] = ()) -> list[tuple[str, bool]]:
    """(--flag, takes a value) for each option of `cmd`."""
    out = []
    for p in cmd.params:
        if isinstance(p, click.Option) and p.name not in skip and "--help" not in p.opts:
            out.append((max(p.opts, key=len), not (p.is_flag or p.count)))
    return out


def argvs(cmd: click.Command, skip: tuple[str, ...] = (), max_size: int = 5):
    """Argument lists for `cmd`: its own options with hostile values, and now
    and then a stray word."""
    opts = _options(cmd, skip)

    def one(opt):
        flag, takes = opt
        return VALUES.map(lambda v: [flag, v]) if takes else st.just([flag])

    piece = st.one_of(st.sampled_from(opts).flatmap(one), VALUES.map(lambda v: [v]))
    return st.lists(piece, max_size=max_size).map(lambda parts: sum(parts, []))


def _good_store(path: str) -> str:
    events = [event(i) for i in range(9)] + [event(9, comm=b"\xffodd")]
    good = (10**18, 10**9, "execs", "t:sched:sched_process_exec():int:pcomm,comm", [])
    status = {"exec": {"emitted": 3, "lost": 1, "partial": 0, "rate": 2.5}}
    return make_store(path, events, [good], status)


@pytest.fixture(scope="module")
def store_dir():
    # in memory where there is one: hundreds of small databases, no fsync needed
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="vigil-fuzz-", dir=shm) as d:
        _good_store(os.path.join(d, "good.db"))
        yield d


# -- commands that only read: run them ----------------------------------------------------------
@pytest.mark.parametrize("name", ["events", "status", "summaries"])
def test_fuzz_reading_commands(store_dir, name):
    db = os.path.join(store_dir, "good.db")
    cmd = cli.cli.commands[name]

    @FUZZ
    @given(argv=argvs(cmd, skip=("db_path",)))
    def check(argv):
        res = run([name, "--db", db, *argv])
        assert_user_facing(res)
        if res.rc == 0 and "--json" in argv and "--help" not in argv:
            for line in res.out.splitlines():
                assert isinstance(orjson.loads(line), dict)

    check()


@FUZZ
@given(path=st.one_of(RAW, TEXT, st.sampled_from(["", ".", "/", "/dev/null", "/proc/self/mem"])))
def test_fuzz_db_path(path):
    for name in ("events", "status", "summaries"):
        assert_user_facing(run([name, "--db", path]))


@FUZZ
@given(
    argv=st.lists(
        st.one_of(VALUES, st.sampled_from(["-v", "-vv", "--version", "-h", "events"])), max_size=4
    )
)
def test_fuzz_top_level(store_dir, argv):
    """Whatever words follow `vigil`; a command that would load BPF is not run."""
    if set(argv) & set(LOADING) or (set(argv) & {"doctor"}):
        return
    if "events" in argv:  # never the default /var/lib/vigil store of this host
        argv = [*argv, "--db", os.path.join(store_dir, "good.db")]
    assert_user_facing(run(argv))


@FUZZ
@given(
    sub=st.sampled_from(["check", "show"]),
    path=st.one_of(RAW, TEXT, st.sampled_from(["", ".", "/", "/dev/null", "/proc/self/mem"])),
)
def test_fuzz_config_paths(sub, path):
    """`vigil config check|show PATH` (the files themselves: tests/test_config.py)."""
    assert_user_facing(run(["config", sub, path]))


def test_doctor_json_is_clean():
    res = run(["doctor", "--json"])
    assert_user_facing(res)
    assert res.rc == 0 and isinstance(orjson.loads(res.out), dict)


# -- commands that load BPF: parse their options, then their own parsers --------------------------
def _leaf_commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    """Every command by its path ("rules check"): a group has no options of its own."""
    out = {}
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            out.update(_leaf_commands(cmd, path + " "))
        else:
            out[path] = cmd
    return out


LEAVES = _leaf_commands(cli.cli)
LOADING = sorted(
    n for n in LEAVES if n.split()[0] not in {"events", "status", "summaries", "doctor", "config"}
)


@pytest.mark.parametrize("name", LOADING)
def test_fuzz_option_parsing_of_loading_commands(name):
    cmd = LEAVES[name]

    @FUZZ
    @given(argv=argvs(cmd, max_size=6))
    def check(argv):
        try:
            ctx = cmd.make_context(name, list(argv))
        except (click.ClickException, click.exceptions.Exit):
            return  # a usage error: main() prints it in one line
        for p in cmd.params:
            value = ctx.params.get(p.name)
            if isinstance(p.type, options.FiniteFloat) and value is not None:
                assert 0 <= value <= options.MAX_DURATION, (p.name, value)
            if isinstance(p.type, click.IntRange) and value is not None:
                assert -(2**63) <= value < 2**63, (p.name, value)
            if isinstance(p.type, options.Utf8Text) and value:
                for v in value if isinstance(value, tuple) else (value,):
                    v.encode()

    check()


def test_every_number_option_is_bounded():
    """The rule the fuzzing relies on: no bare float (nan and inf pass every
    FloatRange) and no int without bounds anywhere in the command line."""
    for name, cmd in LEAVES.items():
        for p in cmd.params:
            where = f"vigil {name} {p.opts}"
            if isinstance(p.type, click.types.FloatParamType):
                assert isinstance(p.type, options.FiniteFloat), where
            if isinstance(p.type, click.types.IntParamType) and not p.count:
                assert isinstance(p.type, click.IntRange), where
                assert p.type.min is not None and p.type.max is not None, where
                assert p.type.min >= -(2**63) and p.type.max < 2**64, where


# argdist specs: pieces of the grammar, recombined with hostile ones
_PROBE = st.sampled_from(["t", "p", "r", "u", "", "x", "T"]) | RAW
_TARGET = st.sampled_from(["capability", "syscalls", "sched", "sock", "", "c", "/bin/true"]) | RAW
_FUNC = (
    st.sampled_from(
        ["cap_capable()", "sys_enter_openat()", "sys_exit_openat()", "sched_process_exec()",
         "inet_sock_set_state()", "getpid()", "f(int a, char *b)", "f(", "f)", "()", "f(void)"]
    )
    | RAW
)  # fmt: skip
_TYPES = st.sampled_from(["int", "u32", "char*", "long,int", "u8", "struct x", "", "void*"]) | RAW
_EXPRS = (
    st.sampled_from(
        ["comm", "cap", "comm,cap", "$retval", "arg1", "arg7", "ret", "bytes/0", "bytes/1024",
         "pid,tid,uid,gid,ppid,cgroup,cpu", "$comm", "filename", "dfd", "a,a", "pcomm,comm"]
    )
    | RAW
)  # fmt: skip
_FILTER = st.one_of(
    st.sampled_from(
        ["comm==x", "comm==\\xff", "cap==21", "cap<=99999999999999999999", "ret<0",
         "comm<x", "pid!=1&&cap==2", "comm=='quoted'", "==", "x"]
    ),
    st.tuples(st.sampled_from(["comm", "cap", "pid", "ret"]), st.sampled_from(["==", "!=", "<"]),
              VALUES).map("".join),
)  # fmt: skip
SPECS = st.one_of(
    st.tuples(_PROBE, _TARGET, _FUNC).map(":".join),
    st.tuples(_PROBE, _TARGET, _FUNC, _TYPES, _EXPRS).map(":".join),
    st.tuples(_PROBE, _TARGET, _FUNC, _TYPES, _EXPRS, _FILTER).map(":".join),
    st.tuples(_PROBE, _TARGET, _FUNC, _TYPES, _EXPRS, _FILTER, VALUES).map("#".join),
    VALUES,
)


@FUZZ
@given(text=SPECS, histogram=st.booleans(), pid=st.none() | st.integers(1, 4194303))
def test_fuzz_argdist_spec(text, histogram, pid):
    try:
        spec = parse(text, histogram, pid=pid)
    except VigilError:
        return
    spec.text.encode()  # printable, storable
    for f in spec.filters:
        assert isinstance(f.value, int | bytes)


@FUZZ
@given(values=st.lists(st.one_of(SPECS.map(lambda s: "n=" + s), VALUES, RAW), max_size=3))
def test_fuzz_summary_option(values):
    try:
        specs = summaries.parse_option(tuple(values))
    except VigilError:
        return
    for name, spec in specs.items():
        name.encode()
        summaries.as_text(spec).encode()


@FUZZ
@given(pattern=VALUES, ports=st.lists(VALUES, max_size=3))
def test_fuzz_regex_and_ports(pattern, ports):
    try:
        live.regex(pattern, "name")
    except VigilError:
        pass
    try:
        tcpconnect.parse_ports(tuple(ports))
    except (VigilError, click.BadParameter):
        pass


# -- tampered stores: a valid schema, hostile rows -------------------------------------------
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSONS = st.recursive(
    SCALARS,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3),
    max_leaves=6,
)
_FIELDS = [
    "args", "argc", "filename", "ret", "exe", "child_pid", "exit_code", "signal", "duration_ns",
    "cap", "cap_name", "audit", "verdict", "laddr", "lport", "raddr", "rport", "state", "ip",
    "proto", "fd", "backlog", "line", "result", "err", "error", "latency_ns", "origin", "flags",
]  # fmt: skip
KINDS = st.sampled_from(
    ["exec", "fork", "exit", "capable", "connect", "accept", "retransmit", "bind", "listen",
     "bash", "nosuch"]
)  # fmt: skip
# a good header (so the row is shown) with hostile fields for its kind
SHOWN = st.fixed_dictionaries(
    {
        "kind": KINDS,
        "ts_ns": st.integers(-(2**63), 2**63 - 1),
        "pid": st.integers(-(2**63), 2**63 - 1),
        "ppid": st.integers(0, 2**31),
        "comm": TEXT,
    },
    optional={f: JSONS for f in _FIELDS},
)
# SQLite keeps any type in any column
CELLS = st.one_of(
    st.none(),
    st.integers(-(2**65), 2**65),
    st.floats(),
    TEXT,
    st.binary(max_size=12),
)
DATA = st.one_of(
    SHOWN.map(json.dumps),
    JSONS.map(json.dumps),
    st.dictionaries(st.sampled_from(["kind", "ts_ns", "pid", "ppid", "comm"]), JSONS).map(
        json.dumps
    ),
    CELLS,
)
COUNTS = st.one_of(
    st.lists(
        st.tuples(st.dictionaries(TEXT, SCALARS, max_size=2) | SCALARS, SCALARS), max_size=3
    ).map(json.dumps),
    JSONS.map(json.dumps),
    CELLS,
)


def _real_layout() -> tuple[str, int]:
    """(the stored description of a real record layout, its record size):
    the accept sensor's, from the built object."""
    from vigil import _libbpf as bpf
    from vigil import paths, records

    decoder = records.Decoder()
    with bpf.Object(paths.bpf_object("accept")) as obj:
        decoder.add_btf(obj.btf())
    form = next(f for f in decoder.forms.values() if f.layout.kind == "accept")
    return form.description, form.layout.size


_DESCRIPTION, _RECORD_SIZE = _real_layout()


def _mutated(draw_value) -> st.SearchStrategy:
    """The real description with one key (or a field's entry) replaced."""
    real = json.loads(_DESCRIPTION)

    def edit(args):
        key, index, value = args
        out = json.loads(_DESCRIPTION)
        if key == "fields" and out["fields"]:
            field = out["fields"][index % len(out["fields"])]
            field[index % len(field)] = value
        else:
            out[key] = value
        return json.dumps(out)

    return st.tuples(st.sampled_from(sorted(real)), st.integers(0, 50), draw_value).map(edit)


# a layout row: the real one, one edited, or anything
DESCRIPTIONS = st.one_of(st.just(_DESCRIPTION), _mutated(JSONS), JSONS.map(json.dumps), CELLS)
# a record: of the layout's size (any bytes: decoded, then checked), cut short, or anything
RECORDS = st.one_of(
    st.binary(min_size=_RECORD_SIZE, max_size=_RECORD_SIZE + 40), st.binary(max_size=64), CELLS
)

_COLUMNS = {
    "events_p1": ("ts_ns", "kind", "pid", "comm", "proc", "data", "rec", "layout"),
    "layouts": ("digest", "kind", "description"),
    "processes": (
        "id",
        "process_key",
        "parent_key",
        "host",
        "boot_id",
        "exe",
        "ancestors",
        "last_ts_ns",
    ),
    "sensor_status": ("kind", "updated_ns", "emitted", "lost", "partial", "stored", "rate"),
    "summaries": ("ts_ns", "interval_ns", "name", "spec", "counts"),
}


def _loose(schema: str) -> str:
    return schema.replace(" NOT NULL", "")


@FUZZ
@given(
    strict=st.booleans(),
    blobs_as_text=st.booleans(),
    events=st.lists(
        st.tuples(
            CELLS,
            CELLS | KINDS,
            CELLS,
            CELLS,
            CELLS | st.integers(1, 3),
            DATA | st.just(""),
            st.none() | RECORDS,
            st.integers(1, 3) | CELLS,
        ),
        max_size=5,
    ),
    layouts=st.lists(
        st.tuples(st.integers(1, 3) | CELLS, CELLS, CELLS | KINDS, DESCRIPTIONS), max_size=3
    ),
    parts=st.lists(st.tuples(st.integers(0, 3) | CELLS, *[CELLS] * 4), max_size=2),
    procs=st.lists(
        st.tuples(
            st.integers(1, 3) | CELLS, *[CELLS | TEXT] * 5, JSONS.map(json.dumps) | CELLS, CELLS
        ),
        max_size=3,
    ),
    status=st.lists(st.tuples(CELLS | KINDS, *[CELLS] * 7), max_size=3),
    sums=st.lists(st.tuples(CELLS, CELLS, CELLS | st.just("execs"), CELLS, COUNTS), max_size=3),
    filters=st.lists(
        st.sampled_from(
            [["--kind", "exec"], ["--kind", "fork"], ["--pid", "5"], ["--since", "1h"], ["-n", "3"]]
        ),
        max_size=2,
    ),
)
def test_fuzz_tampered_store(
    store_dir, strict, blobs_as_text, events, layouts, parts, procs, status, sums, filters
):
    path = os.path.join(store_dir, "tampered.db")
    if strict:
        shutil.copy(os.path.join(store_dir, "good.db"), path)
    else:  # the attacker also dropped the NOT NULLs
        if os.path.exists(path):
            os.unlink(path)
        with sqlite3.connect(path) as db:
            db.executescript(_loose(store_module._SCHEMA))
            db.execute(_loose(store_module._PART_TABLE.format(t="events_p1")))
            db.execute("INSERT INTO partitions VALUES (1, 0, NULL, NULL, 0)")
            db.execute("CREATE VIEW events AS SELECT * FROM events_p1")
            db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?)", (store_module.SCHEMA_VERSION,)
            )
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    try:
        for sql, rows in (
            ("INSERT INTO events_p1 (ts_ns, kind, pid, comm, proc, data, rec, layout)"
             " VALUES (?,?,?,?,?,?,?,?)", events),
            ("INSERT OR REPLACE INTO layouts VALUES (?,?,?,?)", layouts),
            ("INSERT OR REPLACE INTO partitions VALUES (?,?,?,?,?)", parts),
            ("INSERT OR REPLACE INTO processes VALUES (?,?,?,?,?,?,?,?)", procs),
            ("INSERT OR REPLACE INTO sensor_status VALUES (?,?,?,?,?,?,?,?)", status),
            ("INSERT INTO summaries (ts_ns, interval_ns, name, spec, counts) VALUES (?,?,?,?,?)",
             sums),
        ):  # fmt: skip
            for row in rows:
                try:
                    db.execute(sql, row)
                except sqlite3.IntegrityError:
                    pass  # NOT NULL: the schema holds
                except OverflowError:
                    pass  # sqlite3 cannot store it: neither can an attacker
        if blobs_as_text:  # TEXT that is not UTF-8: SQLite does not check
            for table, columns in _COLUMNS.items():
                for column in columns:
                    db.execute(
                        f"UPDATE {table} SET {column} = CAST({column} AS TEXT)"
                        f" WHERE typeof({column}) = 'blob'"
                    )
        db.commit()
    finally:
        db.close()
    flat = sum(filters, [])
    for argv in (
        ["events", "-n", "50", *flat],
        ["events", "-n", "50", "--json", *flat],
        ["status"],
        ["status", "--json"],
        ["summaries"],
        ["summaries", "--json"],
    ):
        res = run([argv[0], "--db", path, *argv[1:]])
        assert_user_facing(res, max_err_lines=2)
        assert res.rc == 0, res
        if "--json" in argv and argv[0] != "status":
            assert all(isinstance(orjson.loads(x), dict) for x in res.out.splitlines())
        elif argv[0] == "status" and "--json" in argv:
            assert isinstance(orjson.loads(res.out), dict)


# -- files Vigil reads besides the store -------------------------------------------------------
_ELF = os.path.join(os.path.dirname(os.path.dirname(__file__)), "build", "bin", "usdt-probe")


@pytest.mark.skipif(not os.path.exists(_ELF), reason="build/bin/usdt-probe not built")
def test_fuzz_hostile_elf_for_uprobes_and_usdt(tmp_path):
    """argdist's p:, r: and u: specs name any file: its symbols and USDT notes
    are read with pyelftools, which a crafted file must not crash through."""
    from vigil import elf
    from vigil.argdist import targets

    with open(_ELF, "rb") as f:
        good = f.read()
    path = str(tmp_path / "hostile")

    @FUZZ
    @given(
        flips=st.lists(
            st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), min_size=1, max_size=8
        ),
        cut=st.none() | st.integers(0, len(good)),
    )
    def check(flips, cut):
        data = bytearray(good)
        for offset, byte in flips:
            data[offset] = byte
        with open(path, "wb") as f:
            f.write(bytes(data[:cut]))
        for read in (lambda: elf._read_symbols.__wrapped__(path, 0, 0),
                     lambda: targets.usdt_probes.__wrapped__(path)):  # fmt: skip
            try:
                read()
            except VigilError:
                pass

    check()


@pytest.mark.skipif(not os.path.exists(_ELF), reason="build/bin/usdt-probe not built")
@pytest.mark.parametrize("name", [".symtab", ".dynsym", ".note.stapsdt"])
def test_a_section_named_as_symbols_or_notes_but_of_another_type_is_ignored(tmp_path, name):
    """What the fuzzer found: a crafted file giving `.symtab` to an SHT_NULL
    section crashed the symbol reader (pyelftools hands back a NullSection).
    A section is used only when its type is the one its name promises."""
    from elftools.elf.elffile import ELFFile

    from vigil import elf
    from vigil.argdist import targets

    with open(_ELF, "rb") as f:
        data = bytearray(f.read())
        f.seek(0)
        parsed = ELFFile(f)
        index = next(i for i, sec in enumerate(parsed.iter_sections()) if sec.name == name)
        header = parsed["e_shoff"] + index * parsed["e_shentsize"]
    struct.pack_into("<I", data, header + 4, 0)  # sh_type: SHT_NULL
    path = tmp_path / "hostile"
    path.write_bytes(bytes(data))

    def read(reader):
        try:
            return reader(str(path))
        except ConfigError as err:  # the one-line error a user sees
            assert "not a readable ELF file" in str(err)
            return None

    symbols = read(lambda p: elf._read_symbols.__wrapped__(p, 0, 0))
    probes = read(targets.usdt_probes.__wrapped__)
    if name == ".note.stapsdt":
        assert probes == ()  # the probes' notes are gone, not misread
        assert "main" in symbols
    elif name == ".symtab":
        assert symbols is not None and "main" not in symbols  # nothing read from it
        assert probes == (("vigil", "probe", 1),)
    else:  # the other sections that link to .dynsym make the file unreadable: said so
        assert symbols is None


def _cache_files():
    from vigil import kernel

    probe = st.fixed_dictionaries({}, optional={k: JSONS for k in ("feature", "ok", "detail")})
    current = st.fixed_dictionaries(
        {"key": st.just(kernel._cache_key()), "probes": st.lists(probe | JSONS, max_size=3)}
    )
    return st.one_of(current.map(json.dumps), JSONS.map(json.dumps), st.binary(max_size=40))


@FUZZ
@given(content=_cache_files())
def test_fuzz_feature_cache(tmp_path_factory, content):
    """doctor reads this boot's probe results from a cache file."""
    from vigil import kernel

    d = tmp_path_factory.mktemp("cache")
    with open(os.path.join(d, "features.json"), "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    saved = kernel.CACHE_DIR
    kernel.CACHE_DIR = str(d)
    try:
        cached = kernel._load_cache()
    finally:
        kernel.CACHE_DIR = saved
    assert cached is None or all(isinstance(p, kernel.Probe) for p in cached.values())
