"""The exec sensor on the real kernel: real programs, real execs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from helpers import TRUE, execs_of, pump_until, start_agent, unique_marker
from vigil import sensors

pytestmark = pytest.mark.kernel


@pytest.fixture
def agent():
    agent, sink = start_agent()
    yield agent, sink
    agent.session.close()


def test_argv_exact(agent):
    agent, sink = agent
    marker = unique_marker()
    subprocess.run(["/bin/true", "a", "b", marker], check=True)
    (ev,) = execs_of(
        pump_until(agent, sink, lambda evs: execs_of(evs, marker=marker)), marker=marker
    )
    assert ev["args"] == [b"/bin/true", b"a", b"b", marker]
    assert ev["argc"] == 4
    assert ev["ret"] == 0
    assert ev["filename"] == b"/bin/true"
    assert ev["comm"] == b"true"
    assert ev["pid"] == ev["tid"]
    assert ev["ppid"] == os.getpid()
    assert ev["uid"] == os.getuid()
    assert ev["syscall"] == "execve"
    assert ev["flags"] == []


def test_missing_file_is_enoent(agent):
    agent, sink = agent
    path = f"/nonexistent/{unique_marker().decode()}"
    with pytest.raises(FileNotFoundError):
        subprocess.run([path, "x"])
    done = lambda evs: execs_of(evs, filename=path.encode())  # noqa: E731
    (ev,) = execs_of(pump_until(agent, sink, done), filename=path.encode())
    assert ev["ret"] == -2
    assert ev["args"] == [path.encode(), b"x"]
    # a failed exec has no new image: the caller's argv, and it says so
    assert ev["flags"] == ["caller_args"]
    assert ev["exe_kind"] == "none"
    # a failed exec keeps the caller's identity
    assert ev["comm"] == os.path.basename(sys.executable).encode()[:15] or ev["ppid"] == os.getpid()


def test_not_executable_is_eacces(agent, tmp_path):
    agent, sink = agent
    script = tmp_path / "noexec"
    script.write_text("#!/bin/sh\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(PermissionError):
        subprocess.run([str(script), "arg one", ""])
    done = lambda evs: execs_of(evs, filename=str(script).encode())  # noqa: E731
    (ev,) = execs_of(pump_until(agent, sink, done), filename=str(script).encode())
    assert ev["ret"] == -13
    assert ev["args"] == [str(script).encode(), b"arg one", b""]
    assert ev["flags"] == ["caller_args"]


def test_non_utf8_argv_bytes_kept(agent):
    agent, sink = agent
    marker = unique_marker()
    weird = b"\xff\xfe caf\xc3\xa9 \\x41 \x1b[2J\nline"
    subprocess.run([b"/bin/true", weird, marker], check=True)
    (ev,) = execs_of(
        pump_until(agent, sink, lambda evs: execs_of(evs, marker=marker)), marker=marker
    )
    assert ev["args"][1] == weird


def test_huge_argv_is_truncated_not_lost(agent):
    agent, sink = agent
    marker = unique_marker()
    args = ["/bin/true", marker.decode()] + ["a"] * 100_000
    subprocess.run(args, check=True)
    (ev,) = execs_of(
        pump_until(agent, sink, lambda evs: execs_of(evs, marker=marker)), marker=marker
    )
    assert "truncated" in ev["flags"]
    assert ev["args"][:3] == [b"/bin/true", marker, b"a"]
    assert 64 <= ev["argc"] < 100_002
    assert ev["ret"] == 0


def test_long_argument_is_truncated(agent):
    agent, sink = agent
    marker = unique_marker()
    subprocess.run(["/bin/true", marker.decode(), "z" * 20_000], check=True)
    (ev,) = execs_of(
        pump_until(agent, sink, lambda evs: execs_of(evs, marker=marker)), marker=marker
    )
    assert "truncated" in ev["flags"]
    assert ev["args"][2].startswith(b"zzzz")
    assert sum(len(a) + 1 for a in ev["args"]) <= 8192


def test_execveat_is_seen(agent):
    agent, sink = agent
    marker = unique_marker()
    fd = os.open(TRUE, os.O_RDONLY)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.execve(fd, [b"true", marker], {})  # fexecve: execveat(fd, "", AT_EMPTY_PATH)
        finally:
            os._exit(127)
    os.close(fd)
    os.waitpid(pid, 0)
    (ev,) = execs_of(
        pump_until(agent, sink, lambda evs: execs_of(evs, marker=marker)), marker=marker
    )
    assert ev["syscall"] == "execveat"
    assert ev["ret"] == 0
    assert ev["exe"] == TRUE.encode()


def test_grandchild_ancestry_names_the_test(agent):
    agent, sink = agent
    marker = unique_marker()
    subprocess.run(["/bin/sh", "-c", f"/bin/true {marker.decode()}; exit 0"], check=True)
    (ev,) = execs_of(
        pump_until(agent, sink, lambda evs: execs_of(evs, marker=marker)), marker=marker
    )
    parent, grandparent = ev["ancestors"][0], ev["ancestors"][1]
    assert parent["pid"] == ev["ppid"]
    # ancestry entries are shared text (docs/events.md, "Enrichment fields")
    assert parent["comm"] == "sh"
    assert parent["exe"] == os.path.realpath("/bin/sh")
    assert grandparent["pid"] == os.getpid()
    assert grandparent["exe"] == os.path.realpath(sys.executable)
    assert ev["ancestors"][-1]["pid"] == 1 or len(ev["ancestors"]) == 16


def test_process_started_before_agent_has_ancestry_from_proc():
    marker = unique_marker()
    # The shell starts before any BPF is loaded: only /proc knows it.
    old = subprocess.Popen(
        ["/bin/sh", "-c", f"read go; exec /bin/true {marker.decode()}"],
        stdin=subprocess.PIPE,
    )
    try:
        agent, sink = start_agent()
        try:
            old.stdin.write(b"go\n")
            old.stdin.close()
            old.wait(5)
            done = lambda evs: execs_of(evs, marker=marker)  # noqa: E731
            (ev,) = execs_of(pump_until(agent, sink, done), marker=marker)
            assert ev["pid"] == old.pid
            assert ev["ancestors"][0]["pid"] == os.getpid()
            assert ev["ancestors"][0]["exe"] == os.path.realpath(sys.executable)
            # the exit of a pre-agent process is enriched from /proc's seed too
            pump_until(
                agent,
                sink,
                lambda evs: any(e["kind"] == "exit" and e["pid"] == old.pid for e in evs),
            )
        finally:
            agent.session.close()
    finally:
        if old.poll() is None:
            old.kill()


def test_exe_is_absolute_for_relative_exec(agent, tmp_path):
    agent, sink = agent
    marker = unique_marker()
    subprocess.run(["./true", marker], cwd=os.path.dirname(TRUE), check=True)
    (ev,) = execs_of(
        pump_until(agent, sink, lambda evs: execs_of(evs, marker=marker)), marker=marker
    )
    assert ev["exe"] == TRUE.encode()


def _lsm_file(agent) -> bool:
    """Whether the kernel resolves the opened file (bprm_check_security)."""
    return any(c.hook == "exec_file" for c in agent.session.choices)


def test_script_names_its_file_and_its_interpreter(agent, tmp_path):
    """A "#!" script runs its interpreter (exe); the script itself, reached
    through a symlink here, is the file the kernel opened."""
    agent, sink = agent
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(script)
    marker = unique_marker()
    subprocess.run([str(link), marker], check=True)
    (ev,) = execs_of(
        pump_until(agent, sink, lambda evs: execs_of(evs, marker=marker)), marker=marker
    )
    assert ev["exe"] == os.path.realpath("/bin/sh").encode()
    assert ev["filename"] == str(link).encode()  # as named: the symlink
    assert ev["file"] == (str(script).encode() if _lsm_file(agent) else b"")
    if _lsm_file(agent):
        assert f"[script {script}]" in sensors.get("exec").describe(ev)


def test_failed_exec_of_a_bad_format_names_the_file_tried(agent, tmp_path):
    """ENOEXEC: the kernel opened the file, found no format for it."""
    agent, sink = agent
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01not a program")
    junk.chmod(0o755)
    with pytest.raises(OSError, match="Exec format error"):
        subprocess.run([str(junk)])
    done = lambda evs: execs_of(evs, filename=str(junk).encode())  # noqa: E731
    (ev,) = execs_of(pump_until(agent, sink, done), filename=str(junk).encode())
    assert ev["ret"] == -8  # ENOEXEC
    assert ev["file"] == (str(junk).encode() if _lsm_file(agent) else b"")


def test_fork_and_exit_events(agent):
    agent, sink = agent
    proc = subprocess.Popen(["/bin/sh", "-c", "exit 7"])
    proc.wait()

    def done(evs):
        return any(e["kind"] == "exit" and e["pid"] == proc.pid for e in evs)

    events = pump_until(agent, sink, done)
    forks = [e for e in events if e["kind"] == "fork" and e["child_pid"] == proc.pid]
    assert len(forks) == 1 and forks[0]["pid"] == os.getpid()
    (ex,) = [e for e in events if e["kind"] == "exit" and e["pid"] == proc.pid]
    assert ex["exit_code"] == 7 and ex["signal"] == 0
    assert 0 < ex["duration_ns"] < 60e9


def test_threads_are_not_forks(agent):
    agent, sink = agent
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    marker = unique_marker()
    subprocess.run(["/bin/true", marker], check=True)
    events = pump_until(agent, sink, lambda evs: execs_of(evs, marker=marker))
    own_forks = [e for e in events if e["kind"] == "fork" and e["pid"] == os.getpid()]
    # exactly one: the subprocess, not the thread
    assert len(own_forks) == 1


def test_killed_process_reports_signal(agent):
    agent, sink = agent
    proc = subprocess.Popen(["/bin/sleep", "30"])
    proc.kill()
    proc.wait()
    events = pump_until(
        agent, sink, lambda evs: any(e["kind"] == "exit" and e["pid"] == proc.pid for e in evs)
    )
    (ex,) = [e for e in events if e["kind"] == "exit" and e["pid"] == proc.pid]
    assert ex["signal"] == 9


def test_uid_filter_in_kernel():
    agent, sink = start_agent(["exec"], enrich=False, rodata={"targ_uid": 4242})
    try:
        marker = unique_marker()
        subprocess.run(["/bin/true", marker], check=True)
        other = unique_marker()
        subprocess.run(["/bin/true", other], user=4242, check=True)
        events = pump_until(agent, sink, lambda evs: execs_of(evs, marker=other))
        assert not execs_of(events, marker=marker)
        assert all(e["uid"] == 4242 for e in events)
    finally:
        agent.session.close()


def test_lost_events_are_counted():
    # A tiny ring that nobody reads: records must be counted as lost.
    agent, sink = start_agent(["exec"], enrich=False, ring_bytes=4096, wakeup_bytes=1 << 30)
    try:
        for _ in range(20):
            subprocess.run(["/bin/true", "x" * 500], check=True)
        stats = agent.session.kernel_stats()["exec"]
        assert stats["lost"] > 0
        assert stats["emitted"] + stats["lost"] >= 20
        agent.step(0)
        assert len(sink.events) == stats["emitted"] > 0
    finally:
        agent.session.close()


def test_threads_exiting_together_make_one_exit_event(tmp_path):
    exe = tmp_path / "threads_exit"
    src = os.path.join(os.path.dirname(__file__), "progs", "threads_exit.c")
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(exe), src], check=True)
    agent, sink = start_agent(["exit"], enrich=False)
    try:
        subprocess.run([str(exe), "200"], check=True)

        def mine(evs):
            return [e for e in evs if e["comm"] == b"threads_exit"]

        events = mine(pump_until(agent, sink, lambda evs: len(mine(evs)) >= 201))
        time.sleep(0.2)
        agent.step(0)
        events = mine(sink.events)
        assert len(events) == 201  # 200 children and the parent
        assert len({e["pid"] for e in events}) == 201
    finally:
        agent.session.close()
