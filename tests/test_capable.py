"""The capable sensor on the real kernel: real processes make real checks.

Each check comes from a small Python child that names itself (comm) and
then binds a low port, chowns a file, calls setuid or, after dropping
CAP_CHOWN from its effective set with capset(2), fails a chown.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import orjson
import pytest

from helpers import pump_until, start_agent, start_vigil, stop_vigil, tcg_slow_cli, vigil
from vigil import _libbpf as bpf
from vigil import caps, loader, records, sensors

pytestmark = pytest.mark.kernel

CAP_CHOWN, CAP_SETUID, CAP_NET_BIND_SERVICE = 0, 7, 10
VIGIL = [os.path.join(os.path.dirname(sys.executable), "vigil")]
# The effective set of the child loses CAP_CHOWN (capset keeps permitted).
DROP_CHOWN = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]
hdr, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
assert libc.capget(ctypes.byref(hdr), data) == 0, ctypes.get_errno()
data[0].effective &= ~(1 << 0)  # CAP_CHOWN
assert libc.capset(ctypes.byref(hdr), data) == 0, ctypes.get_errno()
"""


class Child:
    """A Python child that sets its comm, optionally waits for "go", runs `code`."""

    @staticmethod
    def argv(comm: str, code: str) -> list[str]:
        """The command line of such a child, for subprocess.run: it names
        itself, runs `code` (sys.argv[1:] are the arguments that follow) and
        prints its pid on stderr last."""
        prelude = "import os, socket, sys\n"
        prelude += f"open('/proc/self/comm', 'w').write({comm!r})\n"
        return [sys.executable, "-c", prelude + code + "\nprint(os.getpid(), file=sys.stderr)\n"]

    def __init__(self, comm: str, code: str, *args: str, wait: bool = False):
        prelude = "import os, socket, sys\n"
        prelude += f"open('/proc/self/comm', 'w').write({comm!r})\n"
        if wait:
            prelude += "sys.stdin.readline()\n"
        self.comm = comm.encode()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", prelude + code, *args],
            stdin=subprocess.PIPE if wait else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid
        if not wait:
            self.join()

    def go(self) -> None:
        self.join(b"go\n")

    def join(self, stdin: bytes | None = None) -> None:
        _, err = self.proc.communicate(stdin, timeout=30)
        assert self.proc.returncode == 0, err.decode()


def _checks(events, pid, cap=None):
    return [
        e for e in events if e["kind"] == "capable" and e["pid"] == pid and cap in (None, e["cap"])
    ]


def _settle(agent, seconds=0.3):
    """Read what is still in the ring (the child has exited: it all is)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        agent.step(0.05)


def _low_port() -> int:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        start = int(f.read())
    if start <= 600:
        pytest.skip(f"ports from {start} need no CAP_NET_BIND_SERVICE here")
    return 600


BIND_LOW = """
for port in range(int(sys.argv[1]), 1024):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        break
    except OSError:
        s.close()
else:
    sys.exit("no free port below 1024")
"""
CHOWN = "os.chown(sys.argv[-1], 4321, -1)\n"  # the path is the last argument
DENIED_CHOWN = (
    DROP_CHOWN
    + """
try:
    os.chown(sys.argv[-1], 4321, -1)
    sys.exit("chown worked without CAP_CHOWN")
except PermissionError:
    pass
"""
)


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim"
    path.write_text("x")
    return str(path)


def _attach_modes():
    (hook,) = sensors.get("capable").hooks
    return [pytest.param(alt, id=alt.feature) for alt in hook.alternatives]


def expected_audit(feature: str) -> str:
    """These tests' checks are all audited ones; only fexit and kprobe see
    cap_capable's `opts`, the tracepoint cannot tell."""
    return "unknown" if feature == "tracepoint" else "yes"


def default_feature() -> str:
    """The attach type `vigil capable` picks on this kernel."""
    return loader.choose(sensors.get("capable"))[0].feature


@pytest.fixture(params=_attach_modes())
def agent(request):
    """The capable sensor through each of its attach types this kernel allows:
    the same checks must give the same records whichever one runs."""
    alt = request.param
    if not loader.usable(alt):
        pytest.skip(f"{alt.feature} {alt.target} not available on this kernel")
    agent, sink = start_agent(["capable"], choices={"cap_capable": alt.feature})
    agent.feature = alt.feature
    yield agent, sink
    agent.session.close()


def test_allowed_checks_name_pid_comm_cap(agent, victim):
    agent, sink = agent
    bind = Child("vcap-bind", BIND_LOW, str(_low_port()))
    chown = Child("vcap-chown", CHOWN, victim)
    setuid = Child("vcap-setuid", "os.setuid(0)\n")
    want = [
        (bind, CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"),
        (chown, CAP_CHOWN, "CAP_CHOWN"),
        (setuid, CAP_SETUID, "CAP_SETUID"),
    ]
    events = pump_until(
        agent, sink, lambda evs: all(_checks(evs, c.pid, cap) for c, cap, _ in want)
    )
    for child, cap, name in want:
        ev = _checks(events, child.pid, cap)[0]
        assert ev["comm"] == child.comm
        assert ev["tid"] == child.pid
        assert ev["ppid"] == os.getpid()
        assert ev["uid"] == 0
        assert ev["cap_name"] == name
        assert (ev["verdict"], ev["ret"]) == ("allowed", 0)
        assert ev["audit"] == expected_audit(agent.feature)
        assert ev["init_ns"] is True and ev["other_cred"] is False
        assert ev["target_ns_inum"] == os.stat("/proc/self/ns/user").st_ino
        assert ev["cred_ns_inum"] == ev["target_ns_inum"]
        assert ev["ancestors"][0]["pid"] == os.getpid()
    assert os.stat(victim).st_uid == 4321


def test_dropped_capability_is_denied(agent, victim):
    agent, sink = agent
    child = Child("vcap-denied", DENIED_CHOWN, victim)
    done = lambda evs: _checks(evs, child.pid, CAP_CHOWN)  # noqa: E731
    (ev,) = _checks(pump_until(agent, sink, done), child.pid, CAP_CHOWN)
    assert (ev["verdict"], ev["ret"]) == ("denied", -1)  # -EPERM
    assert ev["comm"] == b"vcap-denied" and ev["cap_name"] == "CAP_CHOWN"
    assert os.stat(victim).st_uid == 0


def test_user_namespace_check_is_not_init_ns():
    # unshare -U -r: root in a new user namespace; its sethostname needs
    # CAP_SYS_ADMIN over the UTS ns owned by that user ns, not the host's.
    agent, sink = start_agent(["capable"], enrich=False)
    try:
        proc = subprocess.Popen(
            ["unshare", "-U", "-r", "-u", "hostname", "vcap-userns"], stderr=subprocess.PIPE
        )
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err

        def sethostname(evs):  # unshare execs hostname: same pid
            return [
                e
                for e in _checks(evs, proc.pid, 21)
                if e["comm"] == b"hostname" and not e["init_ns"]
            ]

        (ev,) = sethostname(pump_until(agent, sink, sethostname))
        assert (ev["verdict"], ev["ret"]) == ("allowed", 0)
        # root of the new namespace, checked against it: not the host's
        assert ev["target_ns_inum"] == ev["cred_ns_inum"]
        assert ev["target_ns_inum"] != os.stat("/proc/self/ns/user").st_ino
        text = sensors.get("capable").describe(ev)
        assert text == f"CAP_SYS_ADMIN allowed in userns {ev['target_ns_inum']} via sethostname"
        assert (ev["syscall"], ev["syscall_nr"]) == ("sethostname", 170)
    finally:
        agent.session.close()


# rtnetlink checks CAP_NET_ADMIN twice: with the credentials the socket was
# opened with (file_ns_capable) and with the task's own.  setuid(0) gives
# the task a new struct cred, so the first check is on "other" credentials.
NETLINK = """
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
os.setuid(0)
import struct
RTM_SETLINK, NLM_F_REQUEST, NLM_F_ACK = 19, 1, 4
body = bytes(16)  # struct ifinfomsg for ifindex 0: refused (EINVAL) after the checks
s.send(struct.pack("=IHHII", 16 + len(body), RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body)
assert struct.unpack_from("=i", s.recv(4096), 16)[0] == -22
"""


def test_check_on_other_credentials(agent):
    agent, sink = agent
    child = Child("vcap-netlink", NETLINK)
    cap_net_admin = 12

    def both(evs):
        return {e["other_cred"] for e in _checks(evs, child.pid, cap_net_admin)} == {True, False}

    events = pump_until(agent, sink, both)
    other = next(e for e in _checks(events, child.pid, cap_net_admin) if e["other_cred"])
    assert other["comm"] == b"vcap-netlink" and other["verdict"] == "allowed"
    assert sensors.get("capable").describe(other) == "CAP_NET_ADMIN allowed (other cred) via sendto"


def test_pid_filter_is_in_kernel(victim):
    target = Child("vcap-target", CHOWN, victim, wait=True)
    other = Child("vcap-other", CHOWN, victim, wait=True)
    agent, sink = start_agent(["capable"], enrich=False, rodata={"targ_pid": target.pid})
    try:
        other.go()
        target.go()
        pump_until(agent, sink, lambda evs: _checks(evs, target.pid, CAP_CHOWN))
        _settle(agent)
        # no keep() in user space: whatever arrived, the kernel sent
        assert {e["pid"] for e in sink.events} == {target.pid}
        emitted = agent.session.kernel_stats()["capable"]["emitted"]
        assert emitted == len(sink.events)
    finally:
        agent.session.close()


REPEAT = "for _ in range(int(sys.argv[1])):\n    os.setuid(0)\n"


@pytest.mark.parametrize("unique", [0, 1])
def test_unique_reports_a_repeated_check_once(unique):
    n = 50
    agent, sink = start_agent(["capable"], enrich=False, rodata={"unique": unique})
    try:
        child = Child("vcap-repeat", REPEAT, str(n))
        pump_until(agent, sink, lambda evs: _checks(evs, child.pid, CAP_SETUID))
        _settle(agent)
        count = len(_checks(sink.events, child.pid, CAP_SETUID))
        if unique:
            assert count == 1
        else:
            assert count >= n
    finally:
        agent.session.close()


def test_unique_keeps_denial_after_allowed_and_new_image_after_exec(victim):
    # allowed chown, then denied chown, then exec: the new program's
    # allowed chown is news too, but only once.  Same pid throughout.
    code = (
        "os.chown(sys.argv[1], 4321, -1)\n"
        + DENIED_CHOWN
        + "os.execv(sys.executable, [sys.executable, '-c', "
        "'import os, sys; os.chown(sys.argv[1], 4322, -1); os.chown(sys.argv[1], 4323, -1)', "
        "sys.argv[1]])\n"
    )
    agent, sink = start_agent(["capable"], enrich=False, rodata={"unique": 1})
    try:
        child = Child("vcap-uniq", code, victim)
        pump_until(agent, sink, lambda evs: len(_checks(evs, child.pid, CAP_CHOWN)) >= 3)
        _settle(agent)
        got = [(e["verdict"], e["comm"]) for e in _checks(sink.events, child.pid, CAP_CHOWN)]
        exe_comm = os.path.basename(sys.executable).encode()[:15]
        assert os.stat(victim).st_uid == 4323  # both chowns after exec ran
        assert got == [
            ("allowed", b"vcap-uniq"),
            ("denied", b"vcap-uniq"),
            ("allowed", exe_comm),
        ]
    finally:
        agent.session.close()


def _stop(proc: subprocess.Popen) -> bytes:
    return stop_vigil(proc)[0]


@tcg_slow_cli
def test_cli_table_columns(victim):
    proc = start_vigil("capable")
    allowed = Child("vcap-cli-ok", CHOWN, victim)
    denied = Child("vcap-cli-no", DENIED_CHOWN, victim)
    time.sleep(0.5)
    lines = _stop(proc).decode().splitlines()
    assert lines[0].split() == ["TIME", "UID", "PID", "COMM", "CAP", "NAME", "AUDIT", "VERDICT"]
    rows = [line.split() for line in lines[1:]]
    for child, verdict in ((allowed, "allowed"), (denied, "denied")):
        mine = [r for r in rows if len(r) == 8 and r[2] == str(child.pid) and r[4] == "0"]
        assert mine, f"no CAP_CHOWN row for {child.comm}"
        when, uid, _, comm, _, name, audit, got = mine[0]
        assert time.strptime(when, "%H:%M:%S")
        assert (uid, comm, name, audit, got) == (
            "0",
            child.comm.decode(),
            "CAP_CHOWN",
            {"unknown": "-", "yes": "1"}[expected_audit(default_feature())],
            verdict,
        )
    # bcc's capable does not show its own checks; neither do we
    assert not [r for r in rows if r[2] == str(proc.pid)]


@tcg_slow_cli
def test_cli_json_pid_filter_and_relative_time(victim):
    target = Child("vcap-json", CHOWN, victim, wait=True)
    proc = start_vigil("capable", "--json", "-p", str(target.pid), "--unique")
    target.go()
    time.sleep(0.5)
    events = [orjson.loads(line) for line in _stop(proc).splitlines()]
    assert events and {e["pid"] for e in events} == {target.pid}
    (ev,) = [e for e in events if e["cap"] == CAP_CHOWN]  # --unique: once
    assert ev["comm"] == "vcap-json" and ev["cap_name"] == "CAP_CHOWN"
    assert ev["verdict"] == "allowed" and ev["init_ns"] is True
    assert ev["audit"] == expected_audit(default_feature())
    assert ev["exe"] == os.path.realpath(sys.executable)  # exec'd after the tool began
    assert ev["ancestors"][0]["pid"] == os.getpid()

    proc = start_vigil("capable", "-t", "--duration", "5")
    Child("vcap-rel", CHOWN, victim)
    time.sleep(0.5)
    lines = _stop(proc).decode().splitlines()
    assert lines[0].split()[:2] == ["TIME(s)", "UID"]
    row = next(line.split() for line in lines[1:] if "vcap-rel" in line)
    assert 0 <= float(row[0]) < 30


@tcg_slow_cli
def test_monitor_stores_capable_with_ancestry(tmp_path, victim):
    db = str(tmp_path / "v.db")
    sensors = ("--sensor", "capable", "--sensor", "exec", "--sensor", "fork", "--sensor", "exit")
    proc = start_vigil("monitor", "--db", db, "-q", *sensors)
    child = Child("vcap-mon", REPEAT + CHOWN, "20", victim)
    time.sleep(1.0)
    _stop(proc)
    res = vigil("events", "--db", db, "--kind", "capable", "--pid", str(child.pid), "--json")
    assert res.returncode == 0, res.stderr
    events = [orjson.loads(line) for line in res.stdout.splitlines()]
    by_cap = {}
    for ev in events:
        by_cap.setdefault(ev["cap_name"], []).append(ev)
    # the monitor de-duplicates in kernel: 20 setuid(0) calls, one record
    assert len(by_cap["CAP_SETUID"]) == 1
    (ev,) = by_cap["CAP_CHOWN"]
    assert ev["comm"] == "vcap-mon" and ev["verdict"] == "allowed"
    assert ev["ancestors"][0]["pid"] == os.getpid()
    assert ev["ancestors"][0]["exe"] == os.path.realpath(sys.executable)
    text = vigil("events", "--db", db, "--kind", "capable", "--pid", str(child.pid)).stdout
    assert b"CAP_CHOWN allowed" in text  # describe() in the DETAIL column


def test_cap_names_follow_uapi():
    assert caps.name(0) == "CAP_CHOWN"
    assert caps.name(21) == "CAP_SYS_ADMIN"
    assert caps.name(40) == "CAP_CHECKPOINT_RESTORE"
    assert caps.name(41) is None and caps.name(-1) is None
    try:  # the installed UAPI header, when present, agrees
        with open("/usr/include/linux/capability.h") as f:
            text = f.read()
    except OSError:
        return
    for number, name in enumerate(caps.NAMES):
        assert f"#define {name}" in text and f"{name} {number}" in " ".join(text.split())


def chown_trigger():
    """For test_attach_modes: one CAP_CHOWN check by a child; its matcher."""
    # in $TMPDIR, not /tmp: an overlayfs /tmp (the matrix's guests) checks
    # CAP_CHOWN twice, on the overlay inode and again on the upper one
    fd, path = tempfile.mkstemp(prefix="vigil-capable-")
    os.close(fd)
    try:
        child = Child("vcap-mode", CHOWN, path)
    finally:
        os.unlink(path)
    return lambda ev: ev["kind"] == "capable" and ev["pid"] == child.pid and ev["cap"] == CAP_CHOWN


@pytest.mark.parametrize(
    "programs, feature",
    [(("capable_kprobe", "capable_kretprobe"), "kprobe"), (("capable_fexit",), "fentry")],
)
def test_fallback_programs_pass_the_verifier(programs, feature):
    """The alternatives this kernel cannot attach still load where it lets them.

    kprobe programs load here (only attaching needs kprobes); fexit does not
    load at all on this kernel (EPERM), so that case runs only elsewhere.
    """
    from vigil import _libbpf as bpf
    from vigil import kernel, paths

    if feature == "fentry" and not kernel.available("fentry"):
        pytest.skip("fentry programs do not load on this kernel")
    with bpf.Object(paths.bpf_object("capable")) as obj:
        for prog in obj.programs():
            prog.autoload = prog.name in programs
        obj.load()  # with its own default ring: nothing is attached
        assert all(obj.program(name).fd >= 0 for name in programs)


# A child that mounts in a private mount namespace, after exec'ing itself:
# the exec makes the memory-accounting CAP_SYS_ADMIN check (execve, mmap,
# brk), the mounts make theirs (mount).
MOUNTS = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x20000) == 0  # CLONE_NEWNS
assert libc.mount(None, b"/", None, (1 << 14) | (1 << 18), None) == 0  # MS_REC | MS_PRIVATE
for _ in range(3):
    assert libc.mount(b"vcap", sys.argv[-1].encode(), b"tmpfs", 0, None) == 0
"""
CAP_SYS_ADMIN = 21


@pytest.mark.parametrize("unique", [0, 1])
def test_checks_carry_the_syscall_and_unique_keys_on_it(unique, tmp_path):
    agent, sink = start_agent(["capable"], enrich=False, rodata={"unique": unique})
    try:
        child = Child("vcap-mount", MOUNTS, str(tmp_path))

        def admin(evs):  # before it names itself, the child's comm is python's
            return _checks(evs, child.pid, CAP_SYS_ADMIN)

        pump_until(agent, sink, lambda evs: any(e["syscall"] == "mount" for e in admin(evs)))
        _settle(agent)
        by_call: dict[str, int] = {}
        for ev in admin(sink.events):
            by_call[ev["syscall"]] = by_call.get(ev["syscall"], 0) + 1
            assert ev["syscall_nr"] >= 0 and ev["verdict"] == "allowed"
        # 4 mount calls (the private remount and 3 tmpfs mounts), each checked
        # at least once (a new mount checks in may_mount and for the fs too)
        if unique:
            assert by_call["mount"] == 1
        else:
            assert by_call["mount"] >= 4
        assert by_call["unshare"] == 1
        # the exec-time memory-accounting check: once per call with --unique,
        # apart from the mount's
        accounting = {k: v for k, v in by_call.items() if k in ("mmap", "brk")}
        (cap,) = [c for c in agent.session.choices if c.hook == "cap_capable"]
        if cap.feature != "tracepoint":
            # fexit or kprobes at cap_capable() (before 6.14's tracepoint):
            # cap_vm_enough_memory() calls it from the same file
            # (security/commoncap.c), and Debian's 6.1 and 6.12 builds inline
            # that call, so the accounting checks never reach the function
            # entry; the tracepoint, inside cap_capable(), fires in every copy
            assert not accounting
            return
        assert accounting
        if unique:
            assert set(accounting.values()) == {1}
        else:
            assert by_call["mmap"] > 1  # the interpreter maps many times
        # the tracepoint knows the accounting check by its caller, not the rest
        for ev in admin(sink.events):
            want = "no" if ev["syscall"] in ("execve", "mmap", "brk") else "unknown"
            assert ev["audit"] == want, ev
        mount = next(e for e in admin(sink.events) if e["syscall"] == "mount")
        assert sensors.get("capable").describe(mount) == "CAP_SYS_ADMIN allowed via mount"
    finally:
        agent.session.close()


# -- checks made inside execve ------------------------------------------------------------
SETUID_ROOT = "/usr/bin/passwd"
SH = os.path.realpath("/bin/sh")


def _exec_loop(n: int) -> subprocess.CompletedProcess:
    """An unprivileged shell that execs a setuid-root binary n times."""
    loop = f"i=0; while [ $i -lt {n} ]; do {SETUID_ROOT} --help >/dev/null 2>&1; i=$((i+1)); done"
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SH, "-c", loop],
        check=True,
    )


@pytest.mark.parametrize("monitor", [True, False], ids=["monitor", "all-events"])
def test_checks_inside_execve_name_the_program_that_made_them(monitor):
    """comm and exe switch together in the kernel (begin_new_exec), long
    before the exec event reaches the process table: a check made in
    between must still carry the new program's exe, and one made before it
    the old program's."""
    n = 30
    agent, sink = start_agent(("exec", "fork", "exit", "capable"), monitor=monitor)
    with agent.session:
        _exec_loop(n)
        pump_until(
            agent,
            sink,
            lambda evs: (
                sum(e["kind"] == "exec" and e["filename"] == SETUID_ROOT.encode() for e in evs) >= n
            ),
        )
        agent.step(0.2)
    execs = [
        e for e in sink.events if e["kind"] == "exec" and e["filename"] == SETUID_ROOT.encode()
    ]
    pids = {e["pid"] for e in execs}
    checks = [e for e in sink.events if e["kind"] == "capable" and e["pid"] in pids]
    new_image = [e for e in checks if e["comm"] == b"passwd"]
    old_image = [e for e in checks if e["comm"] != b"passwd"]
    (cap,) = [c for c in agent.session.choices if c.hook == "cap_capable"]
    # The new program's checks inside execve are the memory-accounting ones:
    # through fexit or kprobes on 6.1 and 6.12 they are inlined away and
    # never seen (test_checks_carry_the_syscall_and_unique_keys_on_it); what
    # is seen must still name its program right.
    # The monitor records none of them (skip_accounting).
    every_exec_seen = cap.feature == "tracepoint" and not monitor
    if every_exec_seen:
        assert len(new_image) >= n  # every exec makes checks as the new program
    wrong = [e for e in checks if (e["comm"] == b"passwd") != (e["exe"] == SETUID_ROOT.encode())]
    assert wrong == [], wrong[:3]
    assert all(e["exe"] == SH.encode() for e in old_image)
    # the exec event came after those checks: the table alone would have
    # named the shell for each of them
    first_exec = {}
    for e in execs:
        first_exec.setdefault(e["pid"], e["ts_ns"])
    before_exec = [e for e in new_image if e["ts_ns"] < first_exec[e["pid"]]]
    if every_exec_seen:
        assert len(before_exec) >= n


# -- the memory-accounting check --------------------------------------------------------
# A child that forks (the fork's accounting check: syscall clone), then, as
# the same process image, clones into a new mount namespace: a real
# CAP_SYS_ADMIN check in the same syscall, which the accounting check must
# neither hide (de-duplication key) nor be mistaken for.
FORK_THEN_NEWNS = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
# raw clone(2): flags CLONE_NEWNS | SIGCHLD, no new stack (fork-like)
pid = libc.syscall(56, 0x00020000 | 17, 0, 0, 0, 0)
if pid == 0:
    os._exit(0)
assert pid > 0, ctypes.get_errno()
os.waitpid(pid, 0)
"""


def test_monitor_records_no_accounting_check_and_keeps_the_real_one():
    """`vigil monitor`'s settings: every exec, fork and mapping makes a
    CAP_SYS_ADMIN check to size the memory reserve; none is recorded, and
    the clone(CLONE_NEWNS) check after a plain fork is."""
    agent, sink = start_agent(["capable"], enrich=False, monitor=True)
    try:
        (cap,) = [c for c in agent.session.choices if c.hook == "cap_capable"]
        child = Child("vcap-newns", FORK_THEN_NEWNS)
        pump_until(
            agent,
            sink,
            lambda evs: any(e["syscall"] == "clone" for e in _checks(evs, child.pid, 21)),
        )
        _settle(agent)
        admin = _checks(sink.events, child.pid, CAP_SYS_ADMIN)
        # the exec of python (execve, mmap, brk) and the plain fork made
        # accounting checks: gone; what remains is the namespace's, once
        assert [e["syscall"] for e in admin] == ["clone"], admin
        assert admin[0]["verdict"] == "allowed" and admin[0]["init_ns"]
        assert admin[0]["audit"] == ("unknown" if cap.feature == "tracepoint" else "yes")
    finally:
        agent.session.close()


def test_accounting_caller_is_read_from_a_learnt_stack_word():
    """The unwinder costs about 1 us a check, on every mmap of every process:
    the tracepoint program learns which stack word holds cap_capable()'s
    return address (checks of both kinds agreeing with the unwinder), then
    reads that one word.  Once learnt, the accounting checks are still
    dropped, a real CAP_SYS_ADMIN check made right after them (the same
    process image, clone after fork) is still kept, and the sampled
    re-walks agree with the word."""
    if default_feature() != "tracepoint":
        pytest.skip("fexit and kprobes know the accounting check by its `opts`")
    agent, sink = start_agent(["capable"], enrich=False, monitor=True)
    try:
        session = agent.session
        decode, size = records.struct_decoder(session.btf_of("acct_slot_state"), "acct_slot_state")
        fd = session.map("acct_slot_state").fd

        def state() -> dict:
            return decode(bpf.map_lookup(fd, b"\0" * 4, size))

        deadline = time.monotonic() + 30
        while state()["slot"] == 0 and time.monotonic() < deadline:
            os.setuid(0)  # CAP_SETUID: a check of another caller
            Child("vcap-learn", "")  # exec, mmap, brk: accounting checks
        learnt = state()
        assert learnt["slot"] > 0, learnt
        assert learnt["n_acct"] >= 8 and learnt["n_other"] >= 8, learnt
        children = [Child("vcap-newns", FORK_THEN_NEWNS) for _ in range(20)]
        pump_until(
            agent,
            sink,
            lambda evs: all(
                any(e["syscall"] == "clone" for e in _checks(evs, c.pid, CAP_SYS_ADMIN))
                for c in children
            ),
        )
        _settle(agent)
        for child in children:
            admin = _checks(sink.events, child.pid, CAP_SYS_ADMIN)
            assert [e["syscall"] for e in admin] == ["clone"], admin
        # one check in 64 is walked again, drawn at random: 20 execs make ~160
        # accounting checks, none drawn 8% of the time: more until one is
        deadline = time.monotonic() + 30
        while state()["n_verified"] <= learnt["n_verified"] and time.monotonic() < deadline:
            Child("vcap-more", "")
        after = state()
        assert after["slot"] == learnt["slot"] and after["n_mismatch"] == 0, after
        assert after["n_verified"] > learnt["n_verified"], after
    finally:
        agent.session.close()


@tcg_slow_cli
def test_cli_hides_the_accounting_check_unless_verbose():
    """bcc's capable hides non-audit checks unless -v: through the tracepoint
    the accounting check is now known as one."""
    if default_feature() != "tracepoint":
        pytest.skip("fexit and kprobes do not see the accounting check (inlined)")
    seen = {}
    for flags in ((), ("-v",)):
        proc = start_vigil("capable", "--json", *flags)
        try:
            child = subprocess.run(Child.argv("vcap-acct", ""), stderr=subprocess.PIPE, check=True)
            pid = int(child.stderr.split()[-1])
            time.sleep(0.5)
        finally:
            out, _ = stop_vigil(proc)
        evs = [orjson.loads(line) for line in out.splitlines() if line.startswith(b"{")]
        seen[flags] = [e for e in evs if e["pid"] == pid and e["cap"] == CAP_SYS_ADMIN]
    assert seen[()] == []
    verbose = seen[("-v",)]
    assert verbose and {e["audit"] for e in verbose} == {"no"}, verbose
    assert {e["syscall"] for e in verbose} >= {"execve", "mmap"}


# -- where the accounting check's callers are (kernel.function_range) -------------------
def test_function_range_reads_core_text_only(tmp_path):
    """The ranges the sensor compares return addresses with: a function's
    address to the next core text symbol's; module symbols, data and
    hidden (all-zero) addresses give nothing to compare with."""
    from vigil import kernel

    syms = tmp_path / "kallsyms"
    syms.write_text(
        "ffffffff81000000 T _text\n"
        "ffffffff81abce80 T cap_vm_enough_memory\n"
        "ffffffff81abcea0 d some_data\n"  # data: not the end of the function
        "ffffffff81abceb0 t __pfx_next_fn\n"
        "ffffffffc0000000 t mod_fn\t[somemod]\n"
        "ffffffff81ffff00 T last_fn\n"
    )
    assert kernel.function_range("cap_vm_enough_memory", str(syms)) == (
        0xFFFFFFFF81ABCE80,
        0xFFFFFFFF81ABCEB0,
    )
    assert kernel.function_range("mod_fn", str(syms)) == (0, 0)  # a module's
    assert kernel.function_range("last_fn", str(syms)) == (0, 0)  # no end known
    assert kernel.function_range("absent", str(syms)) == (0, 0)
    hidden = tmp_path / "hidden"
    hidden.write_text("0000000000000000 T _text\n0000000000000000 T cap_vm_enough_memory\n")
    assert kernel.function_range("cap_vm_enough_memory", str(hidden)) == (0, 0)
    missing = tmp_path / "missing"
    assert kernel.function_range("cap_vm_enough_memory", str(missing)) == (0, 0)


def test_function_range_of_this_kernel():
    from vigil import kernel

    for name in ("cap_vm_enough_memory", "security_vm_enough_memory_mm"):
        start, end = kernel.function_range(name)
        if not start:
            pytest.skip(f"{name}: not in this kernel's kallsyms")
        assert 0 < end - start < 64 << 10, (name, hex(start), hex(end))
