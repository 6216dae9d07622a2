"""The exec sensor against hostile callers: hidden, forged and unreadable argv,
fileless and deleted executables.  Real programs (tests/progs/exec_tricks.c),
real kernel; the truth is what the exec'd program reads from its own
/proc/self/cmdline (tests/progs/cmdline_dump.c)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from helpers import ROOT, TRUE, execs_of, pump_until, start_agent, unique_marker

pytestmark = pytest.mark.kernel

BIN = os.path.join(ROOT, "build", "bin")
TRICKS = os.path.join(BIN, "exec-tricks")
DUMP = os.path.join(BIN, "cmdline-dump")


@pytest.fixture
def agent():
    agent, sink = start_agent(["exec"], enrich=False)
    yield agent, sink
    agent.session.close()


def tricks(dump_dir, *args: str) -> None:
    env = dict(os.environ, VIGIL_CMDLINE_DIR=str(dump_dir))
    subprocess.run([TRICKS, *args], env=env, check=True, timeout=600)


def observed_argvs(dump_dir) -> dict[int, list[bytes]]:
    """pid -> argv as the exec'd program saw it (/proc/self/cmdline)."""
    out = {}
    for name in os.listdir(dump_dir):
        if name.isdigit():
            with open(os.path.join(dump_dir, name), "rb") as f:
                out[int(name)] = f.read().split(b"\0")[:-1]
    return out


def recorded_argvs(agent, sink, pids, timeout=60.0) -> dict[int, dict]:
    """pid -> the successful exec of DUMP that the sensor recorded for it.

    Other work on the host execs too: scan only new events each step."""
    dump = os.path.realpath(DUMP).encode()
    found: dict[int, dict] = {}
    seen = 0
    deadline = time.monotonic() + timeout
    while not set(pids) <= set(found):
        if time.monotonic() > deadline:
            stats = agent.session.kernel_stats()["exec"]
            raise AssertionError(f"{len(set(pids) - set(found))} execs not seen; {stats}")
        agent.step(0.05)
        for ev in sink.events[seen:]:
            if ev["kind"] == "exec" and ev["ret"] == 0 and ev["pid"] in pids and ev["exe"] == dump:
                found[ev["pid"]] = ev
        seen = len(sink.events)
    return {pid: found[pid] for pid in pids}


def assert_recorded_as_observed(agent, sink, dump_dir, expect_runs: int) -> list[dict]:
    seen = observed_argvs(dump_dir)
    assert len(seen) == expect_runs
    recorded = recorded_argvs(agent, sink, seen)
    for pid, argv in seen.items():
        ev = recorded[pid]
        assert ev["args"] == argv, (pid, ev["args"], argv)
        assert ev["argc"] == len(argv)
        assert ev["flags"] == []
    return list(recorded.values())


@pytest.mark.parametrize("mode", ["hidden-all", "hidden-tail"])
def test_argv_in_untouched_page_is_recorded(agent, tmp_path, mode):
    agent, sink = agent
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    marker = unique_marker().decode()
    args = [DUMP, "curl_evil_http://x/y", "", "HIDDEN_SECRET_ARG", marker]
    tricks(dumps, mode, str(tmp_path / "argv.page"), *args)
    (ev,) = assert_recorded_as_observed(agent, sink, dumps, 1)
    assert ev["args"] == [a.encode() for a in args]  # empty argv[2] kept too


def test_forged_argv_race_records_what_the_kernel_used(agent, tmp_path):
    agent, sink = agent
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    tricks(dumps, "race", "200", DUMP)
    evs = assert_recorded_as_observed(agent, sink, dumps, 200)
    # the rewriter did change what the kernel took (values, torn ones too)
    seen = {e["args"][2] for e in evs}
    assert seen - {b"benign_arg_"}, seen


def test_fork_execve_of_literals_never_empty(agent, tmp_path):
    agent, sink = agent
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    tricks(dumps, "literals", "64", DUMP)
    evs = assert_recorded_as_observed(agent, sink, dumps, 64)
    for ev in evs:
        assert ev["args"] == [DUMP.encode(), b"literal_one", b"", b"literal three"]


def test_failed_exec_with_hidden_argv_is_flagged_not_clean(agent, tmp_path):
    agent, sink = agent
    path = f"/nonexistent/{unique_marker().decode()}"
    args = [path, "HIDDEN_SECRET_ARG"]
    tricks(tmp_path, "hidden-fail", str(tmp_path / "argv.page"), *args)
    done = lambda evs: execs_of(evs, filename=path.encode())  # noqa: E731
    (ev,) = execs_of(pump_until(agent, sink, done), filename=path.encode())
    assert ev["ret"] == -2
    assert "caller_args" in ev["flags"]
    # Kernels before 6.8 copy argv before opening the file, which faults the
    # page in: then the read at sys_exit succeeds.  Otherwise it cannot, and
    # the record must say so.  Never a short argv that looks complete.
    print("hidden argv of an ENOENT exec:", ev["flags"], ev["args"])
    if "partial" not in ev["flags"]:
        assert ev["args"] == [a.encode() for a in args]
    assert ev["args"] or "partial" in ev["flags"]


def test_failed_exec_after_the_kernel_copied_argv_reads_hidden_argv(agent, tmp_path):
    """ENOEXEC comes after copy_strings faulted the caller's pages in: read at
    sys_exit (not at entry), the hidden argv is there, flagged as the caller's."""
    agent, sink = agent
    junk = tmp_path / f"junk-{unique_marker().decode()}"
    junk.write_bytes(b"\x00\x01 no known executable format\n")
    junk.chmod(0o755)
    args = [str(junk), "HIDDEN_SECRET_ARG", ""]
    tricks(tmp_path, "hidden-fail", str(tmp_path / "argv.page"), *args)
    done = lambda evs: execs_of(evs, filename=str(junk).encode())  # noqa: E731
    (ev,) = execs_of(pump_until(agent, sink, done), filename=str(junk).encode())
    assert ev["ret"] == -8
    assert ev["flags"] == ["caller_args"]
    assert ev["args"] == [a.encode() for a in args]


def test_failed_exec_with_bad_argv_pointer_is_partial(agent):
    agent, sink = agent
    before = agent.session.kernel_stats()["exec"]["partial"]
    subprocess.run([TRICKS, "badptr", DUMP], check=True)
    dump = DUMP.encode()
    done = lambda evs: [e for e in execs_of(evs, filename=dump) if e["ret"] == -14]  # noqa: E731
    (ev,) = done(pump_until(agent, sink, done))
    assert ev["flags"] == ["partial", "caller_args"]
    assert ev["args"] == [dump]  # what could be read, then the flag
    assert ev["exe_kind"] == "none"
    assert agent.session.kernel_stats()["exec"]["partial"] > before


def _fexecve_child(fd: int, argv: list[bytes]) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.execve(fd, argv, {})  # execveat(fd, "", AT_EMPTY_PATH)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_memfd_exec_is_flagged_with_its_name(agent):
    agent, sink = agent
    marker = unique_marker()
    name = "vigil-fileless " + marker.decode()[-8:]
    fd = os.memfd_create(name, 0)
    try:
        with open(TRUE, "rb") as f:
            os.write(fd, f.read())
        _fexecve_child(fd, [b"true", marker])
    finally:
        os.close(fd)
    done = lambda evs: execs_of(evs, marker=marker)  # noqa: E731
    (ev,) = execs_of(pump_until(agent, sink, done), marker=marker)
    assert ev["exe_kind"] == "memfd"
    assert ev["memfd_name"] == f"memfd:{name}".encode()[len("memfd:") :]
    assert ev["exe"] == f"/memfd:{name} (deleted)".encode()
    assert ev["syscall"] == "execveat"
    assert ev["flags"] == []


@pytest.mark.parametrize("name", ["deltrue", "memfd:fake"])
def test_deleted_file_exec_is_flagged(agent, tmp_path, name):
    """A deleted file is "deleted", even one named like a memfd: the kernel's
    objects decide, not the path string."""
    agent, sink = agent
    marker = unique_marker()
    path = tmp_path / name
    shutil.copy(TRUE, path)
    path.chmod(0o755)
    fd = os.open(path, os.O_RDONLY)
    try:
        path.unlink()
        _fexecve_child(fd, [b"deltrue", marker])
    finally:
        os.close(fd)
    done = lambda evs: execs_of(evs, marker=marker)  # noqa: E731
    (ev,) = execs_of(pump_until(agent, sink, done), marker=marker)
    assert ev["exe_kind"] == "deleted"
    assert "memfd_name" not in ev
    assert ev["exe"] == f"{os.path.realpath(tmp_path)}/{name} (deleted)".encode()


def test_plain_exec_is_a_file(agent):
    agent, sink = agent
    marker = unique_marker()
    subprocess.run([TRUE, marker], check=True)
    (ev,) = execs_of(
        pump_until(agent, sink, lambda evs: execs_of(evs, marker=marker)), marker=marker
    )
    assert ev["exe_kind"] == "file"
    assert "memfd_name" not in ev
