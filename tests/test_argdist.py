"""vigil argdist / bitehist: real probes, real workloads of known shape,
exact counts read back from the kernel's maps."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from helpers import ROOT, start_vigil, tcg_slow_cli, vigil
from vigil.argdist import SLOTS, Aggregation, parse, printers, tracefs
from vigil.argdist.runner import key_layout
from vigil.errors import ConfigError, VigilError
from vigil.kernel import target_exists

pytestmark = pytest.mark.kernel

BIN = os.path.join(ROOT, "build", "bin")
TARGET = os.path.join(BIN, "uprobe-target")
USDT = os.path.join(BIN, "usdt-probe")
VIGIL = [os.path.join(os.path.dirname(sys.executable), "vigil")]


class Child:
    """A Python child: sets its comm, says "ready", waits for "go", runs `code`.

    Its pid is known before it does anything the test counts, and all of
    Python's start-up (imports, failed opens, writes) is over by then.
    """

    def __init__(self, code: str, comm: str = "argdist-kid"):
        prelude = (
            "import os, sys\n"
            f"open('/proc/self/comm', 'w').write({comm!r})\n"
            "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
            "sys.stdin.readline()\n"
        )
        self.comm = comm
        self.proc = subprocess.Popen(
            [sys.executable, "-c", prelude + code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid
        assert self.proc.stdout.readline() == b"ready\n"

    def go(self) -> None:
        _, err = self.proc.communicate(b"go\n", timeout=60)
        assert self.proc.returncode == 0, err.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def child_factory():
    children = []

    def make(code: str, comm: str = "argdist-kid") -> Child:
        c = Child(code, comm)
        children.append(c)
        return c

    yield make
    for c in children:
        c.kill()


def _as_dict(rows, name):
    return {key[name]: n for key, n in rows}


# -- tracepoints ------------------------------------------------------------------------
# capability:cap_capable is new in 6.14 (Debian 12's 6.1 and 6.12 lack it):
# tests written against its fields need it; the other tracepoint tests
# exercise argdist on every kernel of `make test-kernels`.
def _has_tracepoint(name: str) -> bool:
    try:
        return target_exists("tracepoint", name)
    except VigilError:  # no tracefs (not root): the kernel tests are skipped anyway
        return False


needs_cap_capable_tp = pytest.mark.skipif(
    not _has_tracepoint("capability/cap_capable"),
    reason="tracepoint capability:cap_capable is new in 6.14; not on this kernel",
)
SETUIDS = 25
SETUID_CODE = f"for _ in range({SETUIDS}): os.setuid(0)\n"
CAP_SETUID = 7


@needs_cap_capable_tp
def test_tracepoint_count_by_field(child_factory):
    child = child_factory(SETUID_CODE)
    spec = parse(f"t:capability:cap_capable():int:cap:pid=={child.pid}")
    with Aggregation(spec) as agg:
        child.go()
        rows = agg.read()
        assert agg.lost == 0 and agg.errors == 0
    counts = _as_dict(rows, "cap")
    assert counts.get(CAP_SETUID) == SETUIDS, rows
    assert key_layout(spec) == "num"
    # read() cleared the map
    with Aggregation(spec) as agg:
        assert agg.read() == []


@needs_cap_capable_tp
def test_tracepoint_multi_key_comm_pcomm_and_common_pid_filter(child_factory):
    child = child_factory(SETUID_CODE, comm="argdist-multi")
    with open("/proc/self/comm") as f:
        my_comm = f.read().strip()
    spec = parse(
        f"t:capability:cap_capable():int:comm,cap,pcomm,uid:common_pid=={child.pid}&&cap=={CAP_SETUID}"
    )
    assert spec.key_names == ["comm", "cap", "pcomm", "uid"]
    assert key_layout(spec) == "comm"  # the comm-sized key: 104 bytes to hash, not 296
    with Aggregation(spec) as agg:
        child.go()
        rows = agg.read()
    # the filter ran in the kernel: only this key, exactly N times
    assert rows == [
        ({"comm": "argdist-multi", "cap": CAP_SETUID, "pcomm": my_comm, "uid": 0}, SETUIDS)
    ]


FAILS, OPENS = 17, 9
OPEN_CODE = f"""
for _ in range({FAILS}):
    try:
        os.open('/nonexistent/argdist-test', os.O_RDONLY)
    except FileNotFoundError:
        pass
for _ in range({OPENS}):
    os.close(os.open('/dev/null', os.O_RDONLY))
"""


def test_in_kernel_filters_on_openat_return(child_factory):
    child = child_factory(OPEN_CODE)
    ne = parse(f"t:syscalls:sys_exit_openat():long:ret:ret!=0&&pid=={child.pid}")
    lt = parse(f"t:syscalls:sys_exit_openat():long:ret:ret<0&&pid=={child.pid}")
    eq = parse(f"t:syscalls:sys_exit_openat():long:ret:ret==-2&&pid=={child.pid}")
    with Aggregation(ne) as a_ne, Aggregation(lt) as a_lt, Aggregation(eq) as a_eq:
        child.go()
        r_ne, r_lt, r_eq = a_ne.read(), a_lt.read(), a_eq.read()
    assert r_lt == [({"ret": -2}, FAILS)]  # ENOENT, signed: the type is long
    assert r_eq == r_lt
    ok = [(k, n) for k, n in r_ne if k["ret"] != -2]
    assert _as_dict(r_ne, "ret")[-2] == FAILS
    assert len(ok) == 1 and ok[0][1] == OPENS and ok[0][0]["ret"] > 2  # one fd, reused


WRITES = {1: 11, 100: 7, 5000: 3}  # size -> how many
WRITE_CODE = f"""
fd = os.open('/dev/null', os.O_WRONLY)
for size, n in {WRITES!r}.items():
    for _ in range(n):
        os.write(fd, b'x' * size)
"""


def test_histogram_exact_slots(child_factory):
    child = child_factory(WRITE_CODE)
    spec = parse(f"t:syscalls:sys_enter_write():size_t:count:pid=={child.pid}", histogram=True)
    keyed = parse(
        f"t:syscalls:sys_enter_write():size_t:count,comm:pid=={child.pid}", histogram=True
    )
    with Aggregation(spec) as agg, Aggregation(keyed) as agg_keyed:
        child.go()
        hists = agg.read_hist()
        keyed_hists = agg_keyed.read_hist()
    expect = [0] * SLOTS
    for size, n in WRITES.items():
        expect[size.bit_length() - 1] += n  # 1 -> slot 0, 100 -> 6, 5000 -> 12
    assert hists == [({}, expect)]
    assert keyed_hists == [({"comm": "argdist-kid"}, expect)]
    lines = printers.log2_hist_lines(expect, "count")
    assert lines[0] == "     count               : count     distribution"
    assert (
        lines[1] == "         0 -> 1          : 11       |****************************************|"
    )
    assert (
        lines[7] == "        64 -> 127        : 7        |*************************               |"
    )
    assert len(lines) == 1 + 13


def test_string_keys_from_tracepoints(child_factory):
    """A __data_loc string (exec's filename) and a user pointer (openat's filename)."""
    child = child_factory("os.execv('/bin/true', ['true'])\n")
    exec_spec = parse(f"t:sched:sched_process_exec():char*:filename,comm:pid=={child.pid}")
    child2 = child_factory(OPEN_CODE)
    open_spec = parse(
        f"t:syscalls:sys_enter_openat():char*:filename:pid=={child2.pid}&&comm==argdist-kid"
    )
    with Aggregation(exec_spec) as a_exec, Aggregation(open_spec) as a_open:
        child.go()
        child2.go()
        r_exec, r_open = a_exec.read(), a_open.read()
    assert key_layout(exec_spec) == key_layout(open_spec) == "long"
    assert r_exec == [({"filename": "/bin/true", "comm": "true"}, 1)]
    assert _as_dict(r_open, "filename") == {
        "/nonexistent/argdist-test": FAILS,
        "/dev/null": OPENS,
    }


# -- uprobes, uretprobes, USDT ------------------------------------------------------------
CALLS = 30  # uprobe-target: vigil_target(i % 3, i) -> 10 * (i % 3) + 7


def _run_target(n=CALLS, wait=False):
    if wait:
        return subprocess.Popen([TARGET, str(n), "wait"], stdin=subprocess.PIPE)
    subprocess.run([TARGET, str(n)], check=True, capture_output=True)


def test_uprobe_argument_and_uretprobe_retval():
    by_arg = parse(f"p:{TARGET}:vigil_target():int:arg1")
    by_ret = parse(f"r:{TARGET}:vigil_target():int:$retval")
    calls = parse(f"p:{TARGET}:vigil_target()")
    named = parse(f"p:{TARGET}:vigil_target(int a, long b):long:b:a==2")
    with (
        Aggregation(by_arg) as a1,
        Aggregation(by_ret) as a2,
        Aggregation(calls) as a3,
        Aggregation(named) as a4,
    ):
        _run_target()
        r1, r2, r3, r4 = a1.read(), a2.read(), a3.read(), a4.read()
    assert _as_dict(r1, "arg1") == {0: 10, 1: 10, 2: 10}
    assert _as_dict(r2, "$retval") == {7: 10, 17: 10, 27: 10}
    assert r3 == [({}, CALLS)]
    assert _as_dict(r4, "b") == {b: 1 for b in range(2, CALLS, 3)}


def test_uprobe_string_argument_and_histogram():
    names = parse(f"p:{TARGET}:vigil_greet(const char *name):char*:name")
    hist = parse(f"p:{TARGET}:vigil_target(int a, long b):long:b,a", histogram=True)
    with Aggregation(names) as a1, Aggregation(hist) as a2:
        _run_target()
        r1, r2 = a1.read(), a2.read_hist()
    assert _as_dict(r1, "name") == {"alpha": CALLS // 2, "beta": CALLS // 2}
    for key, slots in r2:
        bs = [b for b in range(CALLS) if b % 3 == key["a"]]
        expect = [0] * SLOTS
        for b in bs:
            expect[max(b, 1).bit_length() - 1] += 1
        assert slots == expect, key
    assert [k["a"] for k, _ in r2] == [0, 1, 2]


def test_pid_restricts_uprobe_to_one_process():
    target = _run_target(12, wait=True)
    try:
        with Aggregation(parse(f"p:{TARGET}:vigil_target():int:pid", pid=target.pid)) as agg:
            _run_target(9)  # another process: not counted
            target.communicate(b"go\n", timeout=30)
            rows = agg.read()
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
    assert rows == [({"pid": target.pid}, 12)]


def test_usdt_counts_and_histogram_by_arg():
    n = 20
    spec = parse(f"u:{USDT}:vigil:probe():long:arg1")
    hist = parse(f"u:{USDT}:probe():long:arg1", histogram=True)  # provider looked up
    with Aggregation(spec) as agg, Aggregation(hist) as agg_h:
        subprocess.run([USDT, str(n)], check=True)
        rows, hists = agg.read(), agg_h.read_hist()
    assert _as_dict(rows, "arg1") == {i: 1 for i in range(n)}
    assert hists == [({}, [2, 2, 4, 8, 4] + [0] * (SLOTS - 5))]


def test_full_map_and_unreadable_values_are_counted():
    with (
        Aggregation(parse(f"u:{USDT}:vigil:probe():long:arg1"), max_entries=5) as full,
        Aggregation(parse(f"p:{TARGET}:vigil_target():char*:arg1")) as bad,
    ):
        subprocess.run([USDT, "20"], check=True)
        _run_target()
        rows = full.read()
        assert len(rows) == 5 and sum(n for _, n in rows) == 5
        assert full.lost == 15
        # arg1 is 0, 1 or 2: not a pointer to any string
        assert bad.read() == [] and bad.errors == CALLS


def test_cumulative_read_keeps_counts():
    with Aggregation(parse(f"p:{TARGET}:vigil_target():int:arg1")) as agg:
        _run_target()
        first = agg.read(clear=False)
        _run_target()
        assert _as_dict(agg.read(clear=False), "arg1") == {0: 20, 1: 20, 2: 20}
        assert _as_dict(first, "arg1") == {0: 10, 1: 10, 2: 10}
        agg.read()
        assert agg.read() == []


# -- bad specs ----------------------------------------------------------------------------
BAD_SPECS = [
    ("t:capability:no_such_event():int:cap", "unknown tracepoint capability:no_such_event"),
    ("t:capability:cap_capable():int:capx", "unknown field 'capx'"),
    ("t:sched:sched_process_exec():int:filename", "filename is a string"),
    ("t:sched:sched_switch():int:prev_comm", "prev_comm is a string (char[16])"),
    ("t:sched:sched_switch():char*:prev_pid", "prev_pid is a number"),
    ("t:capability:cap_capable():intx:cap", "bad type 'intx'"),
    ("t:capability:cap_capable():int:common_type", "common_type of tracepoint capability:cap"),
    ("t:capability:cap_capable():int:cap:cap=!3", "bad filter 'cap=!3'"),
    ("t:capability:cap_capable():int:cap:cap==abc", "'abc' is not an integer"),
    ("t:capability:cap_capable():int:cap:comm<x", "strings take == and != only"),
    ("t:capability:cap_capable():int,int:cap", "2 types for 1 expressions"),
    ("t:capability:cap_capable():int", "a type needs an expression"),
    ("q:capability:cap_capable()", "bad probe type 'q'"),
    ("p:/no/such/binary:main():int:arg1", "/no/such/binary: no such file"),
    (f"p:{TARGET}:no_such_function():int:arg1", "no function symbol 'no_such_function'"),
    ("p:no-such-lib-argdist:f()", "cannot find a binary or library named 'no-such-lib-argdist'"),
    (f"p:{TARGET}:vigil_target():int:$retval", "only r: probes have a return value"),
    (f"r:{TARGET}:vigil_target():int:arg1", "arguments are gone at return"),
    (f"p:{TARGET}:vigil_target():int:arg7", "only arguments 1..6"),
    (f"u:{USDT}:vigil:no_probe():long:arg1", "no USDT probe vigil:no_probe (probes: vigil:probe)"),
    (f"u:{USDT}:vigil:probe():long:arg2", "has 1 argument"),
]


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param(
            t, m, id=m, marks=[needs_cap_capable_tp] if t.startswith("t:capability:") else []
        )
        for t, m in BAD_SPECS
    ],
)
def test_bad_spec_names_the_wrong_part(text, message):
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@needs_cap_capable_tp
def test_bad_histogram_specs():
    with pytest.raises(ConfigError, match="comm is a string"):
        parse("t:capability:cap_capable():int:comm", histogram=True)
    with pytest.raises(ConfigError, match="a histogram needs a number"):
        parse("t:capability:cap_capable():char*:comm", histogram=True)
    with pytest.raises(ConfigError, match="a histogram needs a value"):
        parse("t:capability:cap_capable()", histogram=True)
    spec = parse("t:capability:cap_capable():int:cap", histogram=True)
    with pytest.raises(VigilError, match="use read_hist"), Aggregation(spec) as agg:
        agg.read()


@needs_cap_capable_tp
def test_cli_reports_a_bad_spec_in_one_line():
    proc = vigil("argdist", "-C", "t:capability:cap_capable():int:nope", "-n", "1")
    assert proc.returncode == 1
    assert proc.stderr.decode().strip().splitlines() == [
        "vigil: error: unknown field 'nope' of tracepoint capability:cap_capable"
        " (fields: common_pid, cred, target_ns, capable_ns, cap, ret;"
        " and comm, pcomm, pid, tid, uid, gid, ppid, cgroup, cpu)"
    ]


def test_tracefs_format_parser():
    text = (
        "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
        "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n"
        "\tfield:__data_loc char[] cmd;\toffset:24;\tsize:4;\tsigned:0;\n"
        "\tfield:const char * name;\toffset:32;\tsize:8;\tsigned:0;\n"
        "\tfield:__u8 saddr[4];\toffset:40;\tsize:4;\tsigned:0;\n"
        "\tfield:int ret;\toffset:44;\tsize:4;\tsigned:1;\n"
    )
    fields = tracefs.parse_format(text)
    assert {n: (f.ctype, f.kind, f.offset, f.size, f.signed) for n, f in fields.items()} == {
        "common_type": ("unsigned short", "int", 0, 2, False),
        "comm": ("char[16]", "chars", 8, 16, False),
        "cmd": ("__data_loc char[]", "dataloc", 24, 4, False),
        "name": ("const char *", "pointer", 32, 8, False),
        "saddr": ("__u8[4]", "array", 40, 4, False),
        "ret": ("int", "int", 44, 4, True),
    }


# -- the command line -----------------------------------------------------------------------


def _finish(proc: subprocess.Popen) -> list[str]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out.decode().splitlines()


@needs_cap_capable_tp
def test_cli_counts_in_bcc_format(child_factory):
    child = child_factory(SETUID_CODE)
    spec = f"t:capability:cap_capable():int:cap:pid=={child.pid}"
    hspec = f"t:capability:cap_capable():int:cap:pid=={child.pid}"
    proc = start_vigil("argdist", "-C", spec, "-H", hspec, "-i", "2", "-n", "1")
    child.go()
    lines = _finish(proc)
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\]", lines[0]), lines
    # bcc: histograms first, then counts
    assert lines[1] == hspec
    # bcc prints every slot from 0 up to the last one used: 7 is in [4, 8)
    assert lines[2:6] == [
        "     cap                 : count     distribution",
        f"         0 -> 1          : 0        |{' ' * 40}|",
        f"         2 -> 3          : 0        |{' ' * 40}|",
        f"         4 -> 7          : {SETUIDS:<8} |{'*' * 40}|",
    ]
    assert lines[6] == spec
    assert lines[7] == "\tCOUNT      EVENT"
    assert lines[8:] == [f"\t{SETUIDS:<10} cap = {CAP_SETUID}"]


@tcg_slow_cli
def test_cli_top_and_json(child_factory):
    child = child_factory(OPEN_CODE)
    spec = f"t:syscalls:sys_exit_openat():long:ret:pid=={child.pid}"
    proc = start_vigil("argdist", "-C", spec, "-i", "2", "-n", "1", "-T", "1")
    child.go()
    lines = _finish(proc)
    assert lines[1:] == [spec, "\tCOUNT      EVENT", f"\t{FAILS:<10} ret = -2"]  # the larger only

    child = child_factory(OPEN_CODE)
    spec = f"t:syscalls:sys_exit_openat():long:ret:ret<0&&pid=={child.pid}"
    proc = start_vigil("argdist", "-C", spec, "-i", "2", "-n", "1", "--json")
    child.go()
    (line,) = _finish(proc)
    obj = json.loads(line)
    assert obj["spec"] == spec and obj["lost"] == 0 and obj["errors"] == 0
    assert obj["counts"] == [{"key": {"ret": -2}, "count": FAILS}]


# -- bitehist --------------------------------------------------------------------------------
def _block_dir() -> tuple[str, str] | None:
    """A writable directory on a real block device, and that disk's name."""
    for d in ("/var/tmp", "/tmp", os.path.join(ROOT, "build")):
        try:
            st = os.stat(d)
        except OSError:
            continue
        maj, mnr = os.major(st.st_dev), os.minor(st.st_dev)
        sysdir = f"/sys/dev/block/{maj}:{mnr}"
        if maj == 0 or not os.path.exists(sysdir):
            continue
        real = os.path.realpath(sysdir)
        if os.path.exists(os.path.join(real, "partition")):
            real = os.path.dirname(real)
        return d, os.path.basename(real)
    return None


DD_WRITES = 40


def _direct_writes(path: str, n: int = DD_WRITES) -> None:
    """n direct 64 KiB writes over a file already allocated and on disk: n
    requests of 64 KiB (nothing to allocate, no page cache to merge in)."""
    dd = ["dd", "if=/dev/zero", f"of={path}", "bs=64k", f"count={n}"]
    if not os.path.exists(path):
        subprocess.run([*dd, "conv=fsync"], check=True, capture_output=True)
        return
    subprocess.run([*dd, "oflag=direct", "conv=notrunc"], check=True, capture_output=True)


def _bucket(lines: list[str], start: int = 0) -> int:
    """The count of the 64 -> 127 KiB line after `start`."""
    line = next(x for x in lines[start:] if x.startswith("        64 -> 127        : "))
    return int(line.split(":")[1].split()[0])


@pytest.fixture
def block_file():
    found = _block_dir()
    if found is None:
        pytest.skip("no writable directory on a block device")
    directory, disk = found
    path = os.path.join(directory, f"argdist-bitehist-{os.getpid()}")
    _direct_writes(path)
    yield path, disk
    if os.path.exists(path):
        os.unlink(path)


def test_bitehist_counts_direct_io_sizes_per_disk(block_file):
    path, disk = block_file
    proc = start_vigil("bitehist", "-D", "-i", "3", "-n", "1")
    _direct_writes(path)
    lines = _finish(proc)
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\]", lines[0])
    at = lines.index(f"disk = {disk}")
    assert lines[at + 1] == "     kbytes              : count     distribution"
    assert _bucket(lines, at) >= DD_WRITES, lines


def test_bitehist_prints_at_ctrl_c(block_file):
    path, _disk = block_file
    proc = start_vigil("bitehist")
    _direct_writes(path)
    proc.send_signal(signal.SIGINT)
    lines = _finish(proc)
    assert lines[0] == "     kbytes              : count     distribution"
    assert _bucket(lines) >= DD_WRITES, lines


def test_clearing_reads_are_exact_differences_and_idle_entries_are_freed():
    from vigil import _libbpf
    from vigil.argdist import Aggregation, parse
    from vigil.argdist.runner import IDLE_READS

    spec = parse("t:syscalls:sys_enter_getppid():int:pid", pid=os.getpid())
    with Aggregation(spec) as agg:
        for n in (5, 3):
            for _ in range(n):
                os.getppid()
            assert agg.read() == [({"pid": os.getpid()}, n)]
        assert agg.read(clear=False) == [({"pid": os.getpid()}, 8)]  # running total
        for _ in range(IDLE_READS):
            assert agg.read() == []
        m = agg._map
        assert _libbpf.map_keys(m.fd, m.key_size) == []  # room given back
        os.getppid()
        assert agg.read() == [({"pid": os.getpid()}, 1)]
