"""`vigil rules check` over the SigmaHQ Linux corpus (used where it lies, in
../shared/sigma, never copied here), `vigil rules test` backtests, and
`vigil alerts` over a store."""

from __future__ import annotations

import json
import os

import orjson
import pytest

from helpers import ROOT, vigil

# the SigmaHQ checkout shared by the team: ../shared/sigma from the project,
# or one level further up from a worktree
_CANDIDATES = [
    os.environ.get("VIGIL_SIGMA", ""),
    os.path.join(os.path.dirname(ROOT), "shared", "sigma"),
    os.path.join(os.path.dirname(os.path.dirname(ROOT)), "shared", "sigma"),
]
SIGMA = next(
    (p for p in _CANDIDATES if p and os.path.isdir(os.path.join(p, "rules", "linux"))), None
)
needs_corpus = pytest.mark.skipif(
    SIGMA is None, reason="SigmaHQ rules not found at ../shared/sigma"
)
PACK = os.path.join(ROOT, "rules")


@needs_corpus
def test_corpus_every_rule_gets_an_honest_verdict():
    res = vigil("rules", "check", "--json", os.path.join(SIGMA, "rules", "linux"), text=True)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    files = {
        os.path.join(d, f)
        for d, _, fs in os.walk(os.path.join(SIGMA, "rules", "linux"))
        for f in fs
        if f.endswith(".yml")
    }
    assert {r["path"] for r in rows} == files  # none skipped without a verdict
    by = {}
    for r in rows:
        by.setdefault((r["logsource"], r["verdict"]), []).append(r)
        assert r["verdict"] in ("can-fire", "degraded", "never-fires", "invalid")
        if r["verdict"] != "can-fire":
            assert r["reasons"], r  # every other verdict says why
    pc = sum(len(v) for (ls, _), v in by.items() if ls == "process_creation")
    nc = sum(len(v) for (ls, _), v in by.items() if ls == "network_connection")
    assert pc >= 120 and nc >= 5
    # the floor: what can fire today (122 process_creation, 2 network_connection)
    assert len(by.get(("process_creation", "can-fire"), [])) >= 115
    assert len(by.get(("network_connection", "can-fire"), [])) >= 2
    assert not by.get(("process_creation", "invalid")) and not by.get(
        ("network_connection", "invalid")
    )
    # the ones that cannot fire say which field is missing
    for r in by.get(("network_connection", "never-fires"), []):
        assert "DestinationHostname" in r["reasons"][0]


def test_rules_check_pack_and_table():
    res = vigil("rules", "check", PACK, text=True)
    assert res.returncode == 0, res.stderr
    assert "invalid" in res.stdout and "total" in res.stdout
    rows = [
        json.loads(x)
        for x in vigil("rules", "check", "--json", PACK, text=True).stdout.splitlines()
    ]
    assert rows and all(r["verdict"] == "can-fire" for r in rows), rows


def test_rules_check_missing_path_is_one_line():
    res = vigil("rules", "check", "/nonexistent/rules", text=True)
    assert res.returncode == 1
    assert res.stderr.startswith("vigil: error:") and "Traceback" not in res.stderr


def _exec_line(args, exe, pid=4242, ts=1_795_000_000_000_000_000):
    return orjson.dumps(
        {
            "kind": "exec",
            "flags": [],
            "ts_ns": ts,
            "pid": pid,
            "tid": pid,
            "ppid": 1,
            "uid": 0,
            "gid": 0,
            "cgroup_id": 1,
            "comm": os.path.basename(exe),
            "ret": 0,
            "argc": len(args),
            "euid": 0,
            "egid": 0,
            "auid": 4294967295,
            "filename": exe,
            "exe": exe,
            "args": args,
            "syscall": "execve",
            "ancestors": [{"pid": 1, "comm": "nginx", "exe": "/usr/sbin/nginx"}],
        }
    ).decode()


def test_rules_test_backtests_json_events(tmp_path):
    events = tmp_path / "ev.jsonl"
    events.write_text(
        "\n".join(
            [
                _exec_line(["sh", "-c", "id"], "/usr/bin/dash"),
                _exec_line(["sh", "-c", "id"], "/usr/bin/dash", ts=1_795_000_000_000_000_100),
                _exec_line(["ls"], "/usr/bin/ls", pid=4243),
            ]
        )
        + "\n"
    )
    res = vigil("rules", "test", PACK, "--events", str(events), "--json", text=True)
    assert res.returncode == 0, res.stderr
    alerts = [json.loads(x) for x in res.stdout.splitlines()]
    assert [(a["rule"]["title"], a["count"]) for a in alerts] == [
        ("Shell Spawned by a Network-Facing Service", 2)
    ]
    assert alerts[0]["matched"]["selection_parent"] == {"ParentImage": "/usr/sbin/nginx"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    res = vigil("rules", "test", PACK, "--events", str(bad), text=True)
    assert res.returncode == 1 and "bad.jsonl:1" in res.stderr


def test_monitor_strict_refuses_bad_rules(tmp_path):
    (tmp_path / "bad.yml").write_text("title: x\nid: not-a-uuid\ndetection: {}\n")
    res = vigil(
        "monitor", "--db", str(tmp_path / "db"), "--rules", str(tmp_path), "--strict", text=True
    )
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("vigil: error: 1 invalid rule(s) (--strict):") and "bad.yml" in last
    assert "rule not-a-uuid" in last  # the file, the rule id and the problem
    assert "Traceback" not in res.stderr


def test_rules_test_on_a_store(tmp_path):
    from vigil.outputs.store import Store

    db = str(tmp_path / "events.db")
    store = Store(db)
    lines = [
        _exec_line(["sh", "-c", "id"], "/usr/bin/dash"),
        _exec_line(["ls"], "/usr/bin/ls", pid=9),
    ]
    events = [dict(orjson.loads(x), comm=b"sh") for x in lines]  # as the agent holds them
    store.add(events, [x.encode() for x in lines])
    store.close()
    res = vigil("rules", "test", PACK, "--db", db, "--json", text=True)
    assert res.returncode == 0, res.stderr
    alerts = [json.loads(x) for x in res.stdout.splitlines()]
    assert [(a["rule"]["title"], a["event"]["pid"]) for a in alerts] == [
        ("Shell Spawned by a Network-Facing Service", 4242)
    ]
    res = vigil("alerts", "--db", db, text=True)  # nothing stored: a backtest stores nothing
    assert res.returncode == 0 and res.stdout.strip().startswith("LAST SEEN")
