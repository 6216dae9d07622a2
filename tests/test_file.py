"""The open and file sensors on the real kernel: watched paths read and
written by children (root and nobody), relative and symlinked opens, a
thread rewriting the path mid-call, path changes, and a flood of opens the
in-kernel filter must drop."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

from helpers import ROOT, TIME_SCALE, pump_until, start_agent, start_vigil, stop_vigil, vigil
from test_capable import Child
from vigil import sensors, watchlist

pytestmark = pytest.mark.kernel

NOBODY = pwd.getpwnam("nobody")
URING_OPEN = os.path.join(ROOT, "build", "bin", "uring-open")
AS_NOBODY = f"os.setgroups([]); os.setgid({NOBODY.pw_gid}); os.setuid({NOBODY.pw_uid})\n"


def _opens(events, pid):
    return [e for e in events if e["kind"] == "open" and e["pid"] == pid]


def _changes(events, pid):
    return [e for e in events if e["kind"] == "file" and e["pid"] == pid]


@pytest.fixture
def tree(tmp_path):
    """A watched tree, a watched file, a write-only file and a plain file, all private."""
    root = tmp_path / "w"
    (root / "tree" / "sub").mkdir(parents=True)
    (root / "secret").write_text("s")
    (root / "plain").write_text("p")
    (root / "passwd").write_text("x")
    (root / "tree" / "sub" / "unit").write_text("u")
    os.chmod(tmp_path, 0o755)
    os.chmod(root, 0o755)
    return root


def _agent(tree, *extra):
    patterns = [f"{tree}/secret", f"w:{tree}/passwd", f"{tree}/tree/", *extra]
    return start_agent(["open", "file"], enrich=False, sensor_options={"watch": patterns})


def _open_hook(agent) -> str:
    """The attach point the agent chose for the opens: lsm, fentry or tracepoint."""
    (choice,) = [c for c in agent.session.choices if c.hook == "open"]
    return choice.feature


def _fd_ok(ev) -> bool:
    """A successful open's result: its fd at the call's return; 0 from the LSM
    hook, which runs before the fd exists."""
    return ev["ret"] >= 3 if ev["hook"] == "return" else ev["ret"] == 0


def test_shadow_as_root_and_as_nobody_and_a_plain_file_not_seen():
    # in virtme-ng's guests /etc/shadow is a file bind-mounted over the name:
    # matched by its mountpoint's directory and name
    agent, sink = start_agent(["open", "file"], enrich=False)  # the default watch list
    try:
        read = "open('/etc/shadow').read(1); open('/etc/hostname').read(1)\n"
        root = Child("vopen-root", read)
        nobody = Child(
            "vopen-nobody",
            AS_NOBODY + "try:\n    open('/etc/shadow')\nexcept PermissionError:\n    pass\n",
        )

        def done(evs):
            return _opens(evs, root.pid) and _opens(evs, nobody.pid)

        events = pump_until(agent, sink, done)
        (ok,) = _opens(events, root.pid)  # /etc/hostname is not watched
        assert (ok["path"], ok["path_source"], ok["access"]) == (b"/etc/shadow", "kernel", "read")
        assert _fd_ok(ok) and ok["syscall"] == "openat" and ok["uid"] == 0
        assert ok["hook"] == ("lsm" if _open_hook(agent) == "lsm" else "return")
        assert ok["ino"] == os.stat("/etc/shadow").st_ino
        assert ok["comm"] == b"vopen-root" and ok["flag_names"][0] == "O_RDONLY"
        (denied,) = _opens(events, nobody.pid)
        assert denied["uid"] == NOBODY.pw_uid
        if os.stat("/etc/shadow").st_mode & 0o004:
            # virtme-ng's guests mount a world-readable stand-in over it
            assert (denied["path"], denied["path_source"]) == (b"/etc/shadow", "kernel")
            assert _fd_ok(denied)
            return
        assert (denied["ret"], denied["path"], denied["path_source"]) == (
            -13,
            b"/etc/shadow",
            "caller",
        )
        assert denied["ino"] == 0 and denied["hook"] == "return"
        text = sensors.get("open").describe(denied)
        assert text == "read /etc/shadow (as passed) O_RDONLY|O_CLOEXEC EACCES"
    finally:
        agent.session.close()


def test_write_only_pattern_and_tree(tree):
    agent, sink = _agent(tree)
    try:
        code = (
            f"open({str(tree / 'passwd')!r}).read()\n"  # a read of a w: path: not seen
            f"open({str(tree / 'passwd')!r}, 'a').write('y')\n"
            f"open({str(tree / 'tree/sub/unit')!r}).read()\n"
            f"open({str(tree / 'tree/sub/new')!r}, 'w').write('n')\n"
        )
        child = Child("vopen-write", code)
        events = pump_until(agent, sink, lambda evs: len(_opens(evs, child.pid)) == 3)
        got = [(e["path"], e["access"], e["path_source"]) for e in _opens(events, child.pid)]
        assert got == [
            (os.fsencode(tree / "passwd"), "write", "kernel"),
            (os.fsencode(tree / "tree/sub/unit"), "read", "kernel"),
            (os.fsencode(tree / "tree/sub/new"), "write", "kernel"),
        ]
        assert "O_CREAT" in _opens(events, child.pid)[2]["flag_names"]
    finally:
        agent.session.close()


def test_relative_path_after_chdir_and_symlink_report_the_opened_file(tree, tmp_path):
    link = tmp_path / "innocent"
    os.symlink(tree / "secret", link)
    agent, sink = _agent(tree)
    try:
        code = (
            f"os.chdir({str(tree)!r}); open('secret').read()\n"
            f"open({str(link)!r}).read()\n"
            f"os.chdir({str(tree / 'tree')!r}); open('../secret').read()\n"
        )
        child = Child("vopen-rel", code)
        events = pump_until(agent, sink, lambda evs: len(_opens(evs, child.pid)) == 3)
        paths = {e["path"] for e in _opens(events, child.pid)}
        assert paths == {os.fsencode(tree / "secret")}
        assert {e["path_source"] for e in _opens(events, child.pid)} == {"kernel"}
    finally:
        agent.session.close()


def test_failed_relative_open_is_made_absolute(tree):
    os.chmod(tree / "secret", 0o600)
    agent, sink = _agent(tree)
    try:
        code = (
            f"os.chdir({str(tree)!r})\n"  # as root: pytest's tmp is 0700 above
            + AS_NOBODY
            + "try:\n    open('secret')\nexcept PermissionError:\n    pass\n"
        )
        child = Child("vopen-relfail", code)
        events = pump_until(agent, sink, lambda evs: _opens(evs, child.pid))
        (e,) = _opens(events, child.pid)
        assert (e["ret"], e["path"], e["path_source"]) == (
            -13,
            os.fsencode(tree / "secret"),
            "caller",
        )
    finally:
        agent.session.close()


# The Phantom Attack's child: a thread flips a path buffer (`buf`) between a
# watched name (argv[1]) and an unwatched one (argv[2]), each written with its
# NUL, while the main thread passes `buf` to a path call.
FLIPPER = """
import ctypes, threading
libc = ctypes.CDLL(None, use_errno=True)
W, P = sys.argv[1].encode(), sys.argv[2].encode()
buf = ctypes.create_string_buffer(max(len(W), len(P)) + 1)
stop = False
def flip():
    while not stop:
        ctypes.memmove(buf, P, len(P) + 1)
        ctypes.memmove(buf, W, len(W) + 1)
t = threading.Thread(target=flip); t.start()
"""

# Each open's fd is kept; the child prints fd -> the file really opened.
RACE = (
    FLIPPER
    + """
fds, plain, nsecret = [], 0, 0
for i in range(200000):  # until both names were opened a few times
    fd = libc.open(buf, 0)
    if fd < 0:
        continue
    if os.readlink(f'/proc/self/fd/{fd}') == W.decode():
        nsecret += 1
        if len(fds) < 50:
            fds.append(fd)  # kept open: its number names it in the events
            continue
    else:
        plain += 1
    os.close(fd)
    if len(fds) >= 50 and (plain >= 20 or i > 50000):
        break
stop = True; t.join()
for fd in fds:
    print(fd, os.readlink(f'/proc/self/fd/{fd}'))
print('secret-opens', nsecret)
"""
)


def test_racing_thread_rewriting_the_path_reports_the_file_opened(tree):
    agent, sink = _agent(tree)
    try:
        argv = Child.argv("vopen-race", RACE) + [str(tree / "secret"), str(tree / "plain")]
        proc = subprocess.run(argv, capture_output=True, timeout=60 * TIME_SCALE, check=True)
        pid = int(proc.stderr.split()[-1])
        opened = dict(line.split(" ", 1) for line in proc.stdout.decode().splitlines())
        nsecret = int(opened.pop("secret-opens"))
        secret = [int(fd) for fd, path in opened.items() if path == str(tree / "secret")]
        assert secret  # the watched file was opened at least once
        at_return = _open_hook(agent) != "lsm"

        def kept(evs):
            return [e for e in _opens(evs, pid) if str(e["ret"]) in opened]

        def all_seen(evs):
            return sum(e["path_source"] == "kernel" for e in _opens(evs, pid)) >= nsecret

        events = pump_until(agent, sink, all_seen)
        if at_return:
            for e in kept(events):
                # the reported path is the file behind that fd, whatever the buffer said
                assert opened[str(e["ret"])] == os.fsdecode(e["path"])
                assert e["path_source"] == "kernel"
        # a failed open of a torn string can read as the watched name at the
        # call's return (caller strings: the documented limit); successes are
        # each reported once, from the kernel's file
        assert len([e for e in _opens(events, pid) if e["path_source"] == "kernel"]) == nsecret
        # never the plain one
        assert {e["path"] for e in _opens(events, pid)} == {os.fsencode(tree / "secret")}
    finally:
        agent.session.close()


def test_rename_unlink_chmod_chown_truncate(tree):
    agent, sink = _agent(tree)
    try:
        s, t, p = tree / "secret", tree / "tree/sub/unit", tree / "plain"
        code = (
            f"os.chmod({str(s)!r}, 0o640)\n"
            f"os.chown({str(s)!r}, 1, 2)\n"
            f"os.truncate({str(s)!r}, 0)\n"
            f"fd = os.open({str(t)!r}, os.O_RDWR); os.ftruncate(fd, 1); os.fchmod(fd, 0o600)\n"
            f"os.rename({str(t)!r}, {str(tree / 'tree/moved')!r})\n"
            f"os.rename({str(p)!r}, {str(tree / 'tree/planted')!r})\n"  # into the tree
            f"os.unlink({str(tree / 'tree/planted')!r})\n"
            f"os.chmod({str(tree)!r}, 0o755)\n"  # the watched tree's parent: not watched
        )
        child = Child("vfile-ops", code)
        events = pump_until(agent, sink, lambda evs: len(_changes(evs, child.pid)) == 8)
        # path calls: the caller's strings, or where the kernel's path_* LSM
        # hooks run, the paths it resolved (the same here: absolute, normal)
        by = "kernel" if _path_lsm(agent) else "caller"
        got = [
            (e["op"], e["path"], e["path2"], e["ret"], e["path_source"])
            for e in _changes(events, child.pid)
        ]
        # x86_64 has the legacy calls (chmod, rename...), arm64 only the *at ones
        assert [e["syscall"] for e in _changes(events, child.pid)][3:5] == [
            "ftruncate",
            "fchmod",
        ]
        b = os.fsencode
        assert got == [
            ("chmod", b(s), b"", 0, by),
            ("chown", b(s), b"", 0, by),
            ("truncate", b(s), b"", 0, by),
            ("truncate", b(t), b"", 0, "kernel"),
            ("chmod", b(t), b"", 0, "kernel"),
            ("rename", b(t), b(tree / "tree/moved"), 0, by),
            ("rename", b(p), b(tree / "tree/planted"), 0, by),
            ("unlink", b(tree / "tree/planted"), b"", 0, by),
        ]
        chmod, chown = _changes(events, child.pid)[:2]
        assert chmod["mode"] == 0o640 and (chown["owner_uid"], chown["owner_gid"]) == (1, 2)
        passed = "" if _path_lsm(agent) else " (as passed)"
        assert sensors.get("file").describe(chown) == f"chown {s} 1:2{passed} ok"
    finally:
        agent.session.close()


def _path_lsm(agent) -> bool:
    """Whether the kernel's path_* LSM hooks give the path calls' view."""
    return any(c.hook == "path_lsm" for c in agent.session.choices)


def test_path_calls_through_unnormalised_paths_are_matched_by_the_kernel(tree):
    """chmod of a watched file named "<tree>/./secret", a rename through
    "..": the strings match no watched path; the kernel's lookup does."""
    agent, sink = _agent(tree)
    try:
        if not _path_lsm(agent):
            pytest.skip("path calls are matched by string without the path_* LSM hooks")
        odd = f"{tree}/./secret"
        back = f"{tree}/tree/../tree/sub/unit"
        code = (
            f"os.chmod({odd!r}, 0o600)\n"
            f"os.rename({back!r}, {str(tree / 'tree/sub/unit2')!r})\n"
            f"os.chmod({str(tree / 'plain')!r}, 0o600)\n"  # not watched: nothing
        )
        child = Child("vfile-odd", code)
        events = pump_until(agent, sink, lambda evs: len(_changes(evs, child.pid)) >= 2)
        for _ in range(5):
            agent.step(0.05)
        got = [
            (e["op"], e["path"], e["path2"], e["path_source"])
            for e in _changes(sink.events, child.pid)
        ]
        assert got == [
            ("chmod", os.fsencode(tree / "secret"), b"", "kernel"),
            (
                "rename",
                os.fsencode(tree / "tree/sub/unit"),
                os.fsencode(tree / "tree/sub/unit2"),
                "kernel",
            ),
        ]
        del events
    finally:
        agent.session.close()


# A thread flips the path between a watched and an unwatched file while the
# main thread chmods it; after each call the child finds which file the kernel
# changed (both reset first, by fd: fchmod, another syscall).
CHMOD_RACE = (
    FLIPPER
    + """
fw, fp = os.open(W, os.O_RDONLY), os.open(P, os.O_RDONLY)
hits = {W: 0, P: 0}
for i in range(3000):
    os.fchmod(fw, 0o600); os.fchmod(fp, 0o600)
    if libc.chmod(buf, 0o640) != 0:
        continue
    for name in (W, P):
        if os.stat(name).st_mode & 0o777 == 0o640:
            hits[name] += 1
stop = True; t.join()
print(hits[W], hits[P])
"""
)


def test_a_path_rewritten_around_a_chmod_neither_hides_nor_forges_it(tree):
    """The Phantom Attack on a path call: whichever file the kernel changed
    is what the path_* LSM hooks report, whatever the string says at the
    call's return (through the tracepoints alone a string read at the return
    can lie: the documented limit)."""
    agent, sink = _agent(tree)
    try:
        if not _path_lsm(agent):
            pytest.skip("path calls are matched by string without the path_* LSM hooks")
        argv = Child.argv("vfile-race", CHMOD_RACE) + [str(tree / "secret"), str(tree / "plain")]
        proc = subprocess.run(argv, capture_output=True, timeout=120 * TIME_SCALE, check=True)
        pid = int(proc.stderr.split()[-1])
        on_secret, on_plain = (int(x) for x in proc.stdout.split())
        assert on_secret and on_plain  # the race really switched targets

        def chmods(evs):  # the racing calls, not the fchmod resets
            return [
                e
                for e in _changes(evs, pid)
                if e["op"] == "chmod" and e["syscall"] != "fchmod" and e["ret"] == 0
            ]

        events = pump_until(agent, sink, lambda evs: len(chmods(evs)) >= on_secret)
        for _ in range(10):
            agent.step(0.05)
        got = chmods(sink.events)
        # every chmod of the watched file, and none of the plain one's passed off as it
        assert len(got) == on_secret, (len(got), on_secret, on_plain)
        assert {(e["path"], e["path_source"]) for e in got} == {
            (os.fsencode(tree / "secret"), "kernel")
        }
        del events
    finally:
        agent.session.close()


def test_crontab_write_is_seen():
    """crontab(1) when installed, else a file in /etc/cron.d (what it amounts to).
    Once, even where /etc is an overlay (the matrix's guests), whose own open
    of the file beneath passes the file_open hook too."""
    agent, sink = start_agent(["open", "file"], enrich=False)
    name = f"vigil-test-{os.getpid()}"
    try:
        if shutil.which("crontab"):
            proc = subprocess.run(
                ["crontab", "-"], input=b"* * * * * true\n", check=True, capture_output=True
            )
            del proc
            where = b"/var/spool/cron/"
            done = lambda evs: any(  # noqa: E731
                e["kind"] == "open" and e["path"].startswith(where) and e["access"] == "write"
                for e in evs
            )
            pump_until(agent, sink, done)
            subprocess.run(["crontab", "-r"], check=False)
            return
        path = f"/etc/cron.d/{name}"
        child = Child("vcron", f"open({path!r}, 'w').write('* * * * * root true\\n')\n")
        events = pump_until(agent, sink, lambda evs: _opens(evs, child.pid))
        opens = _opens(events, child.pid)
        assert len(opens) == 1, [
            (e["hook"], e["ret"], e["open_flags"], e["syscall"], e["path"], e["dev"], e["ino"])
            for e in opens
        ]
        (e,) = opens
        assert (e["path"], e["access"], e["path_source"]) == (path.encode(), "write", "kernel")
    finally:
        agent.session.close()
        if os.path.exists(f"/etc/cron.d/{name}"):
            os.unlink(f"/etc/cron.d/{name}")


def test_open_flood_of_unwatched_files_sends_nothing(tree):
    agent, sink = _agent(tree)
    try:
        before = agent.session.kernel_stats()
        plain = str(tree / "plain")
        child = Child(
            "vopen-flood",
            f"for _ in range(20000):\n    os.close(os.open({plain!r}, os.O_RDONLY))\n"
            "for _ in range(2000):\n    try:\n        os.open('/nonexistent/x', 0)\n"
            "    except OSError:\n        pass\n",
        )
        for _ in range(10):
            agent.step(0.02)
        after = agent.session.kernel_stats()
        assert after["open"]["emitted"] == before["open"]["emitted"]
        assert not _opens(sink.events, child.pid)
    finally:
        agent.session.close()


def test_bad_patterns_are_one_line_errors():
    from vigil.errors import ConfigError

    for bad in ("etc/shadow", "/etc/*/x", "/", "/proc/*/*"):
        with pytest.raises(ConfigError, match="watch pattern"):
            watchlist.parse([bad])
    assert watchlist.parse(["@default"]) == watchlist.parse(watchlist.DEFAULT_WATCH)


# test_attach_modes watches a tree of its own (the attach modes are what that
# test is about, not the default list).
MODE_TREE = tempfile.mkdtemp(prefix="vigil-open-mode-")
MODE_OPTIONS = {"sensor_options": {"watch": [MODE_TREE + "/"]}}


def open_trigger():
    """test_attach_modes: a child reads a file of a watched tree."""
    path = os.path.join(MODE_TREE, "secret")
    with open(path, "w") as f:
        f.write("x")
    child = Child("vopen-mode", f"open({path!r}).read(1)\n")
    return lambda ev: (
        ev["kind"] == "open" and ev["pid"] == child.pid and ev["path"] == path.encode()
    )


def _open_under_a_bind_mount(tree, comm: str, source, target, then: str) -> dict:
    """A child in a private mount namespace bind-mounts `source` on `target`,
    then runs `then`; its one watched open, as the agent saw it."""
    agent, sink = _agent(tree)
    try:
        code = (
            "import subprocess\n"
            f"subprocess.run(['mount', '--bind', {str(source)!r}, {str(target)!r}], check=True)\n"
            + then
        )
        argv = ["unshare", "-m", "--propagation", "private", *Child.argv(comm, code)]
        proc = subprocess.run(argv, capture_output=True, timeout=60, check=True)
        pid = int(proc.stderr.split()[-1])
        events = pump_until(agent, sink, lambda evs: _opens(evs, pid))
        (e,) = _opens(events, pid)
        return e
    finally:
        agent.session.close()


def test_bind_mount_alias_is_matched_by_inode(tree, tmp_path):
    """Another name for a watched directory (a bind mount in a private mount
    namespace) opens the same inode: seen, with the path through the alias."""
    alias = tmp_path / "alias"
    alias.mkdir()
    e = _open_under_a_bind_mount(
        tree, "vopen-alias", tree, alias, f"open({str(alias / 'secret')!r}).read()\n"
    )
    assert (e["path"], e["path_source"]) == (os.fsencode(alias / "secret"), "kernel")
    assert e["ino"] == os.stat(tree / "secret").st_ino


def test_single_file_bind_mounted_over_a_watched_name_is_seen(tree, tmp_path):
    """A decoy file bind-mounted over a watched name (as container runtimes do
    to /etc/hosts, virtme-ng to /etc/shadow) is opened by that name: matched
    by the mountpoint's directory and name, reported by that path."""
    decoy = tmp_path / "decoy"
    decoy.write_text("d")
    target = tree / "secret"
    e = _open_under_a_bind_mount(
        tree, "vopen-bindf", decoy, target, f"assert open({str(target)!r}).read() == 'd'\n"
    )
    assert (e["path"], e["path_source"]) == (os.fsencode(target), "kernel")
    assert e["ino"] == os.stat(decoy).st_ino  # the file really opened


def test_io_uring_open_is_seen_by_the_lsm_hook(tree):
    """IORING_OP_OPENAT opens a file with no open syscall at all: the calls'
    returns never see it; the kernel's file_open check does."""
    agent, sink = _agent(tree)
    try:
        if _open_hook(agent) != "lsm":
            pytest.skip("io_uring opens are seen by the file_open LSM hook only (docs/events.md)")
        proc = subprocess.run(
            [URING_OPEN, str(tree / "secret")],
            capture_output=True,
            timeout=60,
        )
        if proc.returncode == 2:
            pytest.skip(f"io_uring unavailable: {proc.stderr.decode().strip()}")
        assert proc.returncode == 0, proc.stderr
        fd = int(proc.stdout.split()[0])
        assert fd >= 0

        def uring_opens(evs):
            return [e for e in evs if e["kind"] == "open" and e["comm"] == b"uring-open"]

        events = pump_until(agent, sink, uring_opens)
        (e,) = uring_opens(events)  # the libc the loader opened is not watched
        assert (e["path"], e["hook"], e["ret"]) == (os.fsencode(tree / "secret"), "lsm", 0)
        assert (e["path_source"], e["access"]) == ("kernel", "read")
        assert e["syscall"] == "io_uring_enter"  # the open ran inline, in the submit
    finally:
        agent.session.close()


def test_opensnoop_columns_failed_only_and_watch_option(tree):
    os.chmod(tree / "secret", 0o600)
    proc = start_vigil("opensnoop", "-x", "-w", f"{tree}/secret")
    try:
        Child("vsnoop-ok", f"open({str(tree / 'secret')!r}).read()\n")
        Child(
            "vsnoop-denied",
            AS_NOBODY + f"try:\n    open({str(tree / 'secret')!r})\nexcept OSError:\n    pass\n",
        )
        time.sleep(1.0)
    finally:
        out, _ = stop_vigil(proc)
    lines = out.decode().splitlines()
    assert lines[0].split() == ["PID", "COMM", "FD", "ERR", "PATH"]
    rows = [line.split() for line in lines[1:]]
    # -x: the successful open is not shown; the refused one is, as passed
    assert [r[1:] for r in rows] == [
        ["vsnoop-denied", "-1", "13", str(tree / "secret"), "(as", "passed)"]
    ]


def test_opensnoop_bad_watch_pattern_is_a_one_line_error():
    res = vigil("opensnoop", "-w", "etc/shadow")
    assert res.returncode != 0
    assert res.stderr.decode().strip().splitlines() == [
        "vigil: error: watch pattern 'etc/shadow': not an absolute path (or ~/...)"
    ]
