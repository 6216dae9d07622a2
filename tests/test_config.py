"""The config file: checked key by key, overridden by explicit flags,
re-read on SIGHUP, and never a traceback on hostile input."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from helpers import ROOT, start_vigil, vigil
from vigil import config, summaries
from vigil import settings as st
from vigil.cli import monitor, record
from vigil.tools.live import ring_options

EXAMPLE = os.path.join(ROOT, "docs", "vigil.example.toml")


def problems(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    _settings, found = config.parse(data)
    return found


# -- every kind of problem, one line each ------------------------------------------------
def test_a_good_file_and_the_shipped_example_are_clean():
    assert problems("") == []
    with open(EXAMPLE, "rb") as f:
        example, found = config.parse(f.read())
    assert found == []
    # the shipped example shows every default: it goes stale if one changes
    assert example == st.Settings()
    # and names every key, in its section
    with open(EXAMPLE) as f:
        text = f.read()
    for dotted in st.leaves(st.DEFAULTS):
        section, _, key = dotted.rpartition(".")
        if dotted == "summaries.specs":
            assert "[summaries.specs]" in text
            continue
        body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
        assert f"\n{key} = " in "\n" + body, dotted


def test_each_bad_key_and_value_is_named_on_its_own_line():
    found = problems(
        "[ring]\nsize_mb = 5000\nlatncy = 1\n"
        "[stor]\n"
        "[status]\ninterval = nan\n"
        "[store]\npath = 3\nbacklog_mb = 1.5\n"
        '[store.retention]\nmax_age = "soon"\n'
        "[sensors]\nenable = [1]\ncapable = 3\n"
        '[summaries.specs]\nx = "t:bad"\n"bad name" = "t:sched:sched_process_exec():int:comm"\n'
        "y = 7\n"
    )
    expected = [
        "ring.size_mb: 5000 is not in the range 1<=x<=1024.",
        "ring.latncy: unknown key (did you mean ring.latency?)",
        "stor: unknown key (did you mean store?)",
        "status.interval: nan is not a finite number",
        "store.path: must be a string, not an integer",
        "store.backlog_mb: must be an integer, not a number",
        "store.retention.max_age: 'soon' is not a time span (use 30d, 12h or seconds)",
        "sensors.enable: must be an array of strings, not an array",
        "sensors.capable: must be a table ([sensors.capable]), not an integer",
        "summaries.specs.x: bad spec 't:bad': expected t:TARGET:FUNCTION()",
        "summaries.specs.bad name: a name is 1 to 64 letters, digits, '_', '.', '-'",
        "summaries.specs.y: must be a string (an argdist -C spec), not an integer",
    ]
    assert sorted(found) == sorted(expected)


def test_bounds_are_the_command_lines_own():
    """The file refuses what the flag refuses, with the same words."""
    res = vigil("monitor", "--ring-mb", "5000", "--config", "/dev/null")
    assert res.returncode == 2
    assert b"5000 is not in the range 1<=x<=1024" in res.stderr
    assert problems("[ring]\nsize_mb = 5000\n") == [
        "ring.size_mb: 5000 is not in the range 1<=x<=1024."
    ]
    # and a summary spec goes through the same parser as --summary
    with pytest.raises(Exception) as flag_err:
        summaries.parse_option(("x=t:bad",))
    (line,) = problems('[summaries.specs]\nx = "t:bad"\n')
    assert line.split(": ", 1)[1] in str(flag_err.value)


def test_not_toml_and_not_utf8_say_where():
    assert problems(b"[ring]\nsize_mb = = 3\n") == ["2:11: not TOML: invalid value"]
    assert problems(b"[ring]\n# caf\xe9\n") == ["2:6: not UTF-8 (byte 0xe9)"]


def test_huge_numbers_and_deep_nesting():
    (line,) = problems(f"[ring]\nsize_mb = {10**40}\n")
    assert line.startswith("ring.size_mb: ") and "chars" in line and len(line) < 120
    (line,) = problems("[status]\ninterval = 1e400\n")
    assert "inf is not a finite number" in line
    assert problems("a = " + "[" * 100000 + "]" * 100000) in (
        ["nested too deeply"],
        ["a: unknown key (known: sensors, ring, log, store, summaries, status, rules)"],
    )


def test_check_command_lines_and_exit_status(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[ring]\nsize_mb = 0\nlatency = 99\n[x]\n")
    res = vigil("config", "check", str(bad))
    assert res.returncode == 1
    lines = res.stdout.decode().splitlines()
    assert lines == [
        f"{bad}: ring.size_mb: 0 is not in the range 1<=x<=1024.",
        f"{bad}: ring.latency: 99.0 is not in the range 0.001<=x<=10.",
        f"{bad}: x: unknown key (known: sensors, ring, log, store, summaries, status, rules)",
    ]
    assert b"Traceback" not in res.stderr
    good = tmp_path / "good.toml"
    good.write_text("[status]\ninterval = 5\n")
    assert vigil("config", "check", str(good)).returncode == 0
    for path in (tmp_path, tmp_path / "missing.toml"):
        res = vigil("config", "check", str(path))
        assert res.returncode == 1 and len(res.stderr.splitlines()) == 1, res.stderr


def test_show_prints_effective_settings_that_read_back_the_same(tmp_path):
    f = tmp_path / "v.toml"
    f.write_text('[status]\ninterval = 2.5\n[summaries.specs]\n"a.b" = ""\n')
    res = vigil("config", "show", str(f), check=True)
    again = tmp_path / "again.toml"
    again.write_bytes(res.stdout)
    assert config.read(str(again)) == config.read(str(f))
    assert b"interval = 2.5" in res.stdout


# -- one source of defaults, flags over the file -------------------------------------------
def test_option_defaults_come_from_the_settings_object():
    for command in (monitor, record):
        for param in command.params:
            dotted = config.OPTION_SETTINGS.get(param.name)
            if dotted and not param.multiple:
                assert param.default == st.default(dotted), param.name
                if st.param_type(dotted) is not None:
                    assert param.type is st.param_type(dotted), param.name

    @click.command()
    @ring_options
    def tool(ring_mb, latency):
        pass

    assert {p.name: p.default for p in tool.params} == {
        "ring_mb": st.DEFAULTS.ring.size_mb,
        "latency": st.DEFAULTS.ring.latency,
    }


def _effective(args: list[str], path):
    ctx = monitor.make_context("monitor", ["--config", str(path), *args])
    settings, _explicit = config.load_for_command(ctx, str(path))
    return settings


def test_an_explicit_flag_wins_over_the_file_a_default_does_not(tmp_path):
    f = tmp_path / "v.toml"
    f.write_text('[ring]\nsize_mb = 64\n[status]\ninterval = 3\n[sensors]\nenable = ["exec"]\n')
    s = _effective([], f)
    assert (s.ring.size_mb, s.status.interval, s.sensors.enable) == (64, 3.0, ["exec"])
    # a flag equal to the built-in default is still explicit: it wins
    s = _effective(["--ring-mb", "16", "--sensor", "fork"], f)
    assert (s.ring.size_mb, s.status.interval, s.sensors.enable) == (16, 3.0, ["fork"])


def test_every_flag_of_a_setting_wins_over_the_file(tmp_path):
    # each option made from a setting, given with a value unlike the file's
    # and the default: the run gets it (--storm-rate and --storm-hold were
    # once missing from a hand-kept list, so silently ignored)
    f = tmp_path / "v.toml"
    f.write_text("[log]\nstorm_rate = 7\nstorm_hold = 7.0\n")
    s = _effective(["--storm-rate", "1234", "--storm-hold", "5"], f)
    assert (s.log.storm_rate, s.log.storm_hold) == (1234, 5.0)
    for command in (monitor, record):
        for param in command.params:
            if param.help and any(param.help == st.help_of(d) for d in st.leaves(st.DEFAULTS)):
                assert param.name in config.OPTION_SETTINGS, param.name


# -- hostile input: one line per problem, never a traceback --------------------------------
KEYS = [k.split(".") for k in st.leaves(st.DEFAULTS)]
toml_values = hs.one_of(
    hs.integers(min_value=-(1 << 80), max_value=1 << 80),
    hs.floats(allow_nan=True, allow_infinity=True).map(
        lambda x: (
            "nan" if x != x else "inf" if x == float("inf") else "-inf" if x < -1e308 else repr(x)
        )
    ),
    hs.text(max_size=20).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', "") + '"'),
    hs.sampled_from(["true", "false", "[]", '["a", 1]', "{}", "{ a = 1 }", "1979-05-27", '"30d"']),
)


@hs.composite
def tomlish(draw):
    lines = []
    for _ in range(draw(hs.integers(0, 8))):
        parts = draw(hs.sampled_from(KEYS))
        if draw(hs.booleans()):
            lines.append(f"[{'.'.join(parts[:-1]) or 'x'}]")
        key = parts[-1] if draw(hs.booleans()) else draw(hs.text(min_size=1, max_size=8))
        lines.append(f"{key} = {draw(toml_values)}")
    if draw(hs.booleans()):
        lines.insert(draw(hs.integers(0, len(lines))), draw(hs.text(max_size=30)))
    return "\n".join(lines)


def _one_line_each(found: list[str]) -> None:
    assert all(isinstance(p, str) and p and "\n" not in p and "\r" not in p for p in found)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tomlish())
def test_fuzz_tomlish_text(text):
    _one_line_each(problems(text.encode("utf-8", "surrogatepass")))


@settings(max_examples=300, deadline=None)
@given(hs.binary(max_size=300))
def test_fuzz_random_bytes(data):
    _one_line_each(problems(data))


@settings(max_examples=50, deadline=None)
@given(hs.integers(1, 5000), hs.sampled_from(["[", "{ a = ", "[[", "a.", "\\u"]))
def test_fuzz_deep_nesting(depth, opener):
    _one_line_each(problems("x = " + opener * depth))
    _one_line_each(problems("[" + "a." * depth + "b]\n"))


def test_fuzzed_file_through_the_command(tmp_path):
    """A few hostile files through `vigil config check` itself: exit 1, lines, no traceback."""
    samples = [
        b"\x00\xff" * 50,
        b"[ring]\nsize_mb = " + b"9" * 5000 + b"\n",
        b"x = " + b"[" * 20000,
        b'[summaries.specs]\n"\\u0000" = "t:\\n"\n',
        b"[sensors]\nenable = ['\x1b[31m']\n[sensors.capable]\nunique = 'yes'\n",
    ]
    for i, data in enumerate(samples):
        f = tmp_path / f"{i}.toml"
        f.write_bytes(data)
        res = vigil("config", "check", str(f))
        assert res.returncode == 1, data
        assert b"Traceback" not in res.stderr + res.stdout
        assert b"\x1b" not in res.stdout  # control characters shown escaped


# -- SIGHUP with a real monitor --------------------------------------------------------------
def _read_until(proc, needle: bytes, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        assert time.monotonic() < deadline, seen
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    return seen


@pytest.mark.kernel
def test_sighup_applies_live_settings_names_the_rest_and_survives_a_broken_file(tmp_path):
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        '[sensors]\nenable = ["exec"]\n[status]\ninterval = 600\n[summaries]\nenabled = false\n'
    )
    proc = start_vigil("monitor", "--config", str(cfg), "--db", str(tmp_path / "v.db"), "-q")
    try:
        cfg.write_text(
            '[sensors]\nenable = ["exec"]\n[status]\ninterval = 0.5\n[summaries]\nenabled = false\n'
            "[ring]\nsize_mb = 32\n"
        )
        proc.send_signal(signal.SIGHUP)
        seen = _read_until(proc, b"needs a restart")
        assert b"applied status.interval; needs a restart: ring.size_mb" in seen
        # the new interval is in force: status lines come now (600 s before)
        _read_until(proc, b"vigil: exec ", timeout=10)

        cfg.write_bytes(b"[status]\ninterval = \xff\n")
        proc.send_signal(signal.SIGHUP)
        seen = _read_until(proc, b"reload failed")
        (line,) = [x for x in seen.splitlines() if b"reload failed" in x]
        assert b"2:12: not UTF-8" in line
        _read_until(proc, b"vigil: exec ", timeout=10)  # still running, old settings
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err


@pytest.mark.kernel
def test_sighup_starts_a_counter_and_its_losses_are_reported(tmp_path):
    """A summary added by reload counts; one whose map fills says how much
    it could not count: status line, store and exit line."""
    cfg = tmp_path / "vigil.toml"
    cfg.write_text('[sensors]\nenable = ["exec"]\n[summaries]\ndefaults = false\n')
    db = tmp_path / "v.db"
    proc = start_vigil(
        "monitor", "--config", str(cfg), "--db", str(db), "-q", "--status-interval", "0.5"
    )
    try:
        cfg.write_text(
            '[sensors]\nenable = ["exec"]\n[summaries]\ndefaults = false\ninterval = 0.5\n'
            '[summaries.specs]\ncloses = "t:syscalls:sys_enter_close():int:fd"\n'
        )
        proc.send_signal(signal.SIGHUP)
        _read_until(proc, b"applied summaries.interval, summaries.specs")
        # 20,000 distinct fds closed: more keys than the map's 10,240 entries
        child = "import os\nfor fd in range(100000, 120000):\n    try: os.close(fd)\n    except OSError: pass\n"
        subprocess.run([sys.executable, "-c", child], check=True)
        seen = _read_until(proc, b"summary:closes 0/s stored 0 lost ", timeout=40)
        lost = int(re.findall(rb"summary:closes 0/s stored 0 lost (\d+)", seen)[-1])
        assert lost >= 20000 - 10240 - 100
        rows = {r["kind"]: r for r in _status_rows(db)}
        assert rows["summary:closes"]["lost"] >= lost
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert b"summary:closes" in err.splitlines()[-1]  # the exit line counts them
    res = vigil("summaries", "--db", str(db), "--name", "closes", "--json", check=True)
    assert res.stdout  # and what it could count was stored


def _status_rows(db):
    import orjson

    res = vigil("status", "--db", str(db), "--json", check=True)
    return orjson.loads(res.stdout)["sensors"]


# -- per-sensor settings and record ------------------------------------------------------------
SETUIDS = """
import ctypes, os
ctypes.CDLL(None).prctl(15, {comm!r}, 0, 0, 0)  # PR_SET_NAME
for _ in range(20):
    os.setuid(0)
"""


@pytest.mark.kernel
@pytest.mark.parametrize("unique", [True, False])
def test_capable_unique_comes_from_the_file(tmp_path, unique):
    """sensors.capable.unique: the monitor's de-duplication of repeated
    checks, on (one record per image and capability) or off (every check)."""
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        '[sensors]\nenable = ["capable"]\n[summaries]\nenabled = false\n'
        f"[sensors.capable]\nunique = {str(unique).lower()}\n"
    )
    db = tmp_path / "v.db"
    comm = f"vigil-u{int(unique)}-{os.getpid() % 1000}".encode()
    proc = start_vigil("monitor", "--config", str(cfg), "--db", str(db), "-q")
    try:
        subprocess.run([sys.executable, "-c", SETUIDS.format(comm=comm)], check=True)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    res = vigil(
        "events", "--db", str(db), "--kind", "capable", "--comm", comm, "--json", check=True
    )
    setuids = [x for x in res.stdout.splitlines() if b'"cap":7' in x]
    assert len(setuids) == (1 if unique else 20)


@pytest.mark.kernel
def test_record_takes_sensors_ring_and_latency_from_the_file(tmp_path):
    cfg = tmp_path / "vigil.toml"
    cfg.write_text('[sensors]\nenable = ["exec"]\n[ring]\nsize_mb = 2\nlatency = 0.05\n')
    out = tmp_path / "r.vrec"
    res = vigil("record", "--config", str(cfg), "-o", str(out), "--duration", "0.5")
    assert res.returncode == 0, res.stderr
    assert b"recording exec into" in res.stderr
    res = vigil(
        "record", "--config", str(cfg), "-o", str(out), "--duration", "0", "--sensor", "fork"
    )
    assert b"recording fork into" in res.stderr  # the flag wins
    cfg.write_text("[ring]\nsize_mb = 0\n")
    res = vigil("record", "--config", str(cfg), "-o", str(out), "--duration", "0")
    assert res.returncode == 1
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .endswith(b"ring.size_mb: 0 is not in the range 1<=x<=1024.")
    )


def test_event_log_keys_are_checked_as_their_flags():
    found = problems(
        "[log]\nbudget_mb = 2\nsegment_mb = 0\nanalysis_grace = -1\nanalysis_nice = 20\n"
        "dir = 3\nsegmnet_mb = 1\n"
    )
    assert sorted(found) == sorted(
        [
            "log.budget_mb: 2 is not in the range 8<=x<=1048576.",
            "log.segment_mb: 0 is not in the range 1<=x<=1024.",
            "log.analysis_grace: -1.0 is not in the range 0.0<=x<=3600.0.",
            "log.analysis_nice: 20 is not in the range 0<=x<=19.",
            "log.dir: must be a string, not an integer",
            "log.segmnet_mb: unknown key (did you mean log.segment_mb?)",
        ]
    ), found
    res = vigil("monitor", "--analysis-nice", "20", "--config", "/dev/null")
    assert res.returncode == 2 and b"20 is not in the range 0<=x<=19" in res.stderr
