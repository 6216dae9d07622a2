"""The bashreadline sensor on the real kernel: a real interactive bash on a pty.

Each test starts `bash --norc --noprofile -i` on a pseudo-terminal (so bash
reads its input with readline, as for a user at a terminal), types lines
into it and waits for the next prompt, which bash prints once the line ran.

A uretprobe only sees calls that *entered* readline after it was attached:
a shell already waiting at its prompt when the sensor starts is seen from
its second line on.  Tests start their shells after the sensor, or type a
first line that is not checked.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest

from helpers import (
    TIME_SCALE,
    pump_until,
    start_agent,
    start_vigil,
    stop_vigil,
    tcg_slow_cli,
    unique_marker,
    vigil,
)
from vigil import kernel, loader
from vigil.errors import ConfigError, VigilError
from vigil.sensors import bashreadline

pytestmark = pytest.mark.kernel

VIGIL = [os.path.join(os.path.dirname(sys.executable), "vigil")]
ME = os.getpid()
BASH = bashreadline.BASH
LINE_SIZE = 4096  # BASHREADLINE_LINE_SIZE, bpf/bashreadline.h
NOBODY = 65534


class Bash:
    """An interactive bash on a pty, typed into as a user would."""

    PROMPT = b"vigil-prompt$ "

    def __init__(self, home: str, uid: int | None = None):
        inputrc = os.path.join(home, "inputrc")
        with open(inputrc, "w") as f:
            # 8-bit clean: bytes >= 0x80 are inserted as typed (in a UTF-8
            # locale readline drops or moves bytes that are not UTF-8)
            f.write("set input-meta on\nset convert-meta off\nset output-meta on\n")
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": home,
            "TERM": "dumb",
            "PS1": self.PROMPT.decode(),
            "LC_ALL": "C",
            "HISTFILE": "",  # no history file written
            "INPUTRC": inputrc,
        }
        pid, fd = pty.fork()  # the child: a new session, the pty its controlling terminal
        if pid == 0:  # pragma: no cover - child
            try:
                if uid is not None:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)
                os.execve(BASH, ["bash", "--norc", "--noprofile", "-i"], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.out = b""
        self._wait(lambda: self.out.count(self.PROMPT) >= 1)

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                self.out += os.read(self.fd, 65536)
            except OSError:  # EIO: bash is gone
                raise AssertionError(f"bash exited; output: {self.out[-500:]!r}") from None

    def _wait(self, done, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout * TIME_SCALE
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"bash did not answer; output: {self.out[-500:]!r}")
            self._read(0.05)

    def type(self, line: bytes) -> None:
        """Type `line` and Enter; return once bash ran it and prompts again."""
        prompts = self.out.count(self.PROMPT)
        data = line + b"\n"
        # in chunks, reading bash's echo in between: a full pty would block both sides
        for i in range(0, len(data), 512):
            os.write(self.fd, data[i : i + 512])
            self._read(0)
        self._wait(lambda: self.out.count(self.PROMPT) > prompts)

    def close(self, how: bytes = b"exit\n") -> None:
        """End the shell (`exit`, or Ctrl-D: readline returns NULL) and reap it."""
        try:
            os.write(self.fd, how)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    return
                try:
                    self._read(0.05)
                except AssertionError:
                    pass  # EIO once bash closed the pty
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        finally:
            os.close(self.fd)


@pytest.fixture
def bash(tmp_path):
    shells = []

    def start(uid: int | None = None) -> Bash:
        shells.append(Bash(str(tmp_path), uid))
        return shells[-1]

    yield start
    for sh in shells:
        if os.path.exists(f"/proc/{sh.pid}") and sh.fd >= 0:
            try:
                sh.close()
            except OSError:
                pass


@pytest.fixture(scope="module")
def live():
    agent, sink = start_agent(["bashreadline"])
    yield agent, sink
    agent.session.close()


def lines_of(events, pid):
    return [e for e in events if e["kind"] == "bashreadline" and e["pid"] == pid]


def wait_line(agent, sink, pid, line):
    done = lambda evs: [e for e in lines_of(evs, pid) if e["line"] == line]  # noqa: E731
    (ev,) = done(pump_until(agent, sink, done))
    return ev


def settle(agent, seconds=0.3):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        agent.step(0.05)


# -- the sensor ------------------------------------------------------------------------
def test_typed_line_with_the_shell_as_header(live, bash):
    agent, sink = live
    sh = bash()
    line = b"echo " + unique_marker()
    sh.type(line)
    ev = wait_line(agent, sink, sh.pid, line)
    assert ev["pid"] == ev["tid"] == sh.pid
    assert ev["ppid"] == ME  # pty.fork's child
    assert ev["comm"] == b"bash"
    assert ev["uid"] == os.getuid() and ev["gid"] == os.getgid()
    assert ev["flags"] == []
    assert ev["ancestors"][0]["pid"] == ME
    assert ev["ancestors"][0]["exe"] == os.path.realpath(sys.executable)
    assert line in sh.out  # bash really read it: its echo is on the terminal


def test_every_line_once_empty_lines_and_eof_skipped(live, bash):
    agent, sink = live
    sh = bash()
    first, last = b"true " + unique_marker(), b": " + unique_marker()
    sh.type(first)
    sh.type(b"")  # Enter alone: readline returns ""
    sh.type(b"   ")  # blanks are a line: bash got them, they are shown
    sh.type(last)
    wait_line(agent, sink, sh.pid, last)
    sh.close(b"\x04")  # Ctrl-D: readline returns NULL, bash exits
    settle(agent)
    assert [e["line"] for e in lines_of(sink.events, sh.pid)] == [first, b"   ", last]


def test_non_utf8_and_control_bytes_are_kept(live, bash):
    agent, sink = live
    sh = bash()
    marker = unique_marker()
    # Latin-1 e-acute: not UTF-8.  (readline, in a UTF-8 locale, drops such a
    # byte when the next one could continue a sequence: a space cannot.)
    latin1 = b"echo caf\xe9 " + marker
    sh.type(latin1)
    assert wait_line(agent, sink, sh.pid, latin1)["line"] == latin1
    assert b"\r\ncaf\xe9 " + marker + b"\r\n" in sh.out  # what bash ran
    # Ctrl-V inserts the next key as is: an ESC sequence reaches the line
    sh.type(b"echo \x16\x1b[31m" + marker)
    wait_line(agent, sink, sh.pid, b"echo \x1b[31m" + marker)


def test_uid_is_the_typing_user(live, bash):
    agent, sink = live
    sh = bash(uid=NOBODY)
    line = b"id -u # " + unique_marker()
    sh.type(line)
    ev = wait_line(agent, sink, sh.pid, line)
    assert b"\r\n65534\r\n" in sh.out  # the shell really runs as nobody
    assert (ev["uid"], ev["gid"]) == (NOBODY, NOBODY)


def test_long_lines_are_cut_and_flagged(live, bash):
    agent, sink = live
    sh = bash()
    marker = unique_marker()
    # just fits: LINE_SIZE - 1 bytes and the NUL
    fits = b": " + marker + b"x" * (LINE_SIZE - 1 - 2 - len(marker))
    sh.type(fits)
    assert wait_line(agent, sink, sh.pid, fits)["flags"] == []
    longer = b": " + marker + b"y" * 6000
    sh.type(longer)
    cut = longer[: LINE_SIZE - 1]
    ev = wait_line(agent, sink, sh.pid, cut)
    assert ev["flags"] == ["truncated"]


def test_pid_filter_is_in_the_kernel(bash):
    mine, other = bash(), bash()
    agent, sink = start_agent(["bashreadline"], enrich=False, rodata={"targ_pid": mine.pid})
    try:
        # both shells sat in readline before the probe, so their first lines
        # are normally not seen; a slow machine (the matrix's TCG guests) can
        # attach before bash waits in readline: settle, then count from here
        mine.type(b": warm-up")
        other.type(b": warm-up")
        settle(agent)
        sink.events.clear()
        emitted_before = agent.session.kernel_stats()["bashreadline"]["emitted"]
        skipped, kept = b"echo " + unique_marker(), b"echo " + unique_marker()
        other.type(skipped)
        mine.type(kept)
        wait_line(agent, sink, mine.pid, kept)
        settle(agent)
        assert {e["pid"] for e in sink.events} == {mine.pid}
        # the other shell's line never reached the ring: filtered in the kernel
        emitted = agent.session.kernel_stats()["bashreadline"]["emitted"] - emitted_before
        assert emitted == len(sink.events) == 1
    finally:
        agent.session.close()


# -- a bash that cannot be probed -----------------------------------------------------
def _one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def test_binary_without_readline_is_a_one_line_error(tmp_path):
    fake = tmp_path / "bash"
    shutil.copy(os.path.realpath(shutil.which("true")), fake)  # an ELF with no readline
    with pytest.raises(ConfigError) as err:
        bashreadline.require_readline(str(fake))
    assert _one_line(err.value) == f"{fake}: no function symbol 'readline' (stripped?)"
    assert not kernel.target_exists("uprobe", f"{fake}:readline")
    # what monitor sees: the sensor cannot be hosted, and says where it looked
    with pytest.raises(VigilError) as err:
        loader.choose(bashreadline.sensor_for(str(fake)))
    assert f"{fake}:readline" in _one_line(err.value)

    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError) as err:
        bashreadline.require_readline(str(script))
    assert _one_line(err.value).startswith(f"{script}: not a readable ELF file")
    with pytest.raises(ConfigError) as err:
        bashreadline.require_readline(str(tmp_path / "missing"))
    assert _one_line(err.value) == f"{tmp_path / 'missing'}: no such file"
    with pytest.raises(ConfigError) as err:
        bashreadline.require_readline(None)
    assert "no bash binary found" in _one_line(err.value)


@tcg_slow_cli
def test_cli_error_for_a_bash_without_readline(tmp_path):
    fake = tmp_path / "bash"
    shutil.copy(os.path.realpath(shutil.which("true")), fake)
    env = {**os.environ, bashreadline.BASH_ENV: str(fake)}
    res = vigil("bashreadline", "--duration", "1", env=env)
    assert res.returncode == 1
    assert res.stderr.decode().splitlines() == [
        f"vigil: error: {fake}: no function symbol 'readline' (stripped?)"
    ]
    assert res.stdout == b""


def test_strip_keeps_readline_in_dynsym(tmp_path):
    """A distribution's stripped bash still works: `strip -s` keeps .dynsym."""
    if shutil.which("strip") is None:
        pytest.skip("no strip(1)")
    copy = tmp_path / "bash"
    shutil.copy(BASH, copy)
    subprocess.run(["strip", "-s", str(copy)], check=True)
    assert bashreadline.require_readline(str(copy)) == str(copy)
    assert kernel.target_exists("uprobe", f"{copy}:readline")


# -- the command line --------------------------------------------------------------------


@tcg_slow_cli
def test_cli_table(bash):
    marker = unique_marker()
    proc = start_vigil("bashreadline")
    sh = bash()
    sh.type(b"echo " + marker)
    sh.type(b"echo \x16\x1b[2J" + marker)  # an escape that would clear the screen
    time.sleep(0.5)
    out, _ = stop_vigil(proc)
    lines = out.decode().splitlines()
    assert lines[0].split() == ["TIME", "PID", "UID", "COMMAND"]
    rows = [line.split(None, 3) for line in lines[1:]]
    mine = [r for r in rows if r[1] == str(sh.pid)]
    assert [r[3] for r in mine] == [f"echo {marker.decode()}", f"echo \\x1b[2J{marker.decode()}"]
    for r in mine:
        time.strptime(r[0], "%H:%M:%S")
        assert r[2] == str(os.getuid())
    assert "\x1b" not in out.decode()


@tcg_slow_cli
def test_cli_json_pid_filter(bash):
    mine, other = bash(), bash()
    proc = start_vigil("bashreadline", "--json", "-p", str(mine.pid), "-t")
    line = b"echo caf\xe9 " + unique_marker()
    mine.type(b": warm-up")  # in readline before the probe: not seen
    other.type(b": warm-up")
    other.type(b"echo " + unique_marker())
    mine.type(line)
    time.sleep(0.5)
    out, _ = stop_vigil(proc)
    events = [orjson.loads(x) for x in out.splitlines()]
    assert {e["pid"] for e in events} == {mine.pid}
    (ev,) = [e for e in events if e["line"] != ": warm-up"]
    # JSON strings keep every byte: non-UTF-8 ones as \xHH (docs/events.md, "Strings")
    assert ev["line"] == line.decode("latin-1").replace("\xe9", "\\xe9")
    assert ev["kind"] == "bashreadline" and ev["comm"] == "bash" and "time" in ev
    assert ev["ancestors"][0]["pid"] == ME


@tcg_slow_cli
def test_monitor_runs_it_and_stores_lines_with_ancestry(tmp_path, bash):
    db = str(tmp_path / "v.db")
    # no --sensor: every sensor this kernel can host, bashreadline among them
    proc = start_vigil("monitor", "--db", db, "-q")
    sh = bash()
    line = b"echo " + unique_marker()
    sh.type(line)
    time.sleep(1.0)
    _, err = stop_vigil(proc)
    ready = proc.seen.splitlines()[-1].decode()  # "vigil: monitoring a, b into DB; ..."
    assert "bashreadline" in ready.partition("monitoring ")[2].partition(" into ")[0].split(", ")
    assert b"events stored" in err
    res = vigil("events", "--db", db, "--json", "--kind", "bashreadline", check=True)
    events = [orjson.loads(x) for x in res.stdout.splitlines()]
    (ev,) = [e for e in events if e["pid"] == sh.pid]
    assert ev["line"] == line.decode() and ev["uid"] == os.getuid()
    assert ev["ancestors"][0]["pid"] == ME
    table = vigil("events", "--db", db, "--kind", "bashreadline", check=True).stdout.decode()
    (row,) = [x for x in table.splitlines() if line.decode() in x]
    assert row.split()[1:3] == ["bashreadline", str(sh.pid)]
