"""`make test-kernels`: the kernel-marked tests on every kernel of the matrix.

Each kernel of scripts/kernels.sh (Debian's own packages, unpacked under
build/kernels) is booted with virtme-ng: QEMU without KVM (TCG; KVM hangs on
these machines), the host's root filesystem shared read-only over 9p, this
tree's venv and BPF objects used as they are.  Inside, pytest runs the
`kernel` tests but those marked `tcg_slow` (too slow under emulation; the
host suite runs them), with its temporary files on a tmpfs (SQLite's WAL
fails on the guest's 9p /tmp).  The running kernel is a column too: the
same selection runs on the host, unemulated.

tests/matrix_plugin.py records, per test, the attach points the loader
chose; the matrix printed at the end is sensor x kernel x attach point, then
every test that failed anywhere.  Any failure on any kernel fails the run.

    scripts/kernel_matrix.py [--kernel NAME|host]... [PYTEST ARGS: -k EXPR, TEST...]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from vigil import sensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "matrix")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
SELECTION = "kernel and not tcg_slow"
GUEST_TMP = "/dev/shm/vigil-matrix"
# A whole kernel's run under TCG, boot included; pytest-timeout bounds each test.
KERNEL_TIMEOUT = 45 * 60


def kernels() -> list[tuple[str, str]]:
    """(name, vmlinuz) of every fetched kernel of the matrix."""
    res = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "kernels.sh"), "list"],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        sys.exit(f"kernel_matrix: {res.stderr.strip()}")
    return [tuple(line.split(" ", 1)) for line in res.stdout.splitlines() if line]


def pytest_args(results: str, extra: list[str]) -> list[str]:
    return [
        os.path.join(VENV_BIN, "python"),
        "-m",
        "pytest",
        "-m",
        SELECTION,
        "-p",
        "matrix_plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfE",
        "--durations=15",
        *extra,
    ]


def test_env(results: str) -> dict[str, str]:
    return {
        "VIGIL_MATRIX_OUT": results,
        "PYTHONPATH": os.path.join(ROOT, "tests"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def run_host(extra: list[str]) -> dict:
    out = os.path.join(OUT, "host")
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results.jsonl")
    env = {**os.environ, **test_env(results)}
    start = time.monotonic()
    with open(os.path.join(out, "console.log"), "w") as log:
        rc = subprocess.call(pytest_args(results, extra), cwd=ROOT, env=env, stdout=log, stderr=log)
    with open(os.path.join(out, "rc"), "w") as f:
        f.write(f"{rc}\n")
    return {
        "name": f"{os.uname().release} (host)",
        "rc": rc,
        "dir": out,
        "time": time.monotonic() - start,
    }


def run_guest(name: str, vmlinuz: str, extra: list[str]) -> dict:
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results.jsonl")
    rc_file = os.path.join(out, "rc")
    for f in (results, rc_file):
        if os.path.exists(f):
            os.remove(f)
    # TIME_SCALE: the tests' waits for events, sized for real hardware, x10 under TCG
    env = {
        **test_env(results),
        "TMPDIR": GUEST_TMP,
        "VIGIL_TEST_TIME_SCALE": "10",
        "VIGIL_MATRIX_GUEST": "1",  # tests/helpers.py: no vigil command starts there
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    # a test 10x slower than on hardware still has a bound (pyproject: 300 s)
    args = pytest_args(results, [f"--basetemp={GUEST_TMP}/pytest", "--timeout=600", *extra])
    script = (
        f"mkdir -p {GUEST_TMP} && cd {shlex.quote(ROOT)} && "
        f"env {exports} {shlex.join(args)}; echo $? > {shlex.quote(rc_file)}"
    )
    vng = [
        os.path.join(VENV_BIN, "vng"),
        "--disable-kvm",  # KVM guests hang on these machines; TCG works
        "--force-9p",
        "--verbose",  # the guest's console is where the script's output goes
        "--memory",
        "2G",
        "--cpus",
        "2",
        f"--rwdir={out}",
        "--run",
        vmlinuz,
        "--exec",
        script,
    ]
    # vng runs virtme-run from PATH: the venv's
    host_env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    start = time.monotonic()
    with open(os.path.join(out, "console.log"), "w") as log:
        try:
            subprocess.run(
                vng, cwd=ROOT, env=host_env, stdout=log, stderr=log, timeout=KERNEL_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            log.write(f"\nkernel_matrix: {name} did not finish in {KERNEL_TIMEOUT} s\n")
    try:
        with open(rc_file) as f:
            rc = int(f.read())
    except (OSError, ValueError):
        rc = -1  # the guest never got to the end
    release = os.path.basename(vmlinuz).removeprefix("vmlinuz-")
    return {"name": release, "rc": rc, "dir": out, "time": time.monotonic() - start}


def read_results(run: dict) -> dict[str, dict]:
    """test id -> {outcome, uses, duration}; the worst phase wins."""
    rank = {"tcg_slow": -1, "passed": 0, "skipped": 1, "failed": 2, "error": 3}
    tests: dict[str, dict] = {}
    path = os.path.join(run["dir"], "results.jsonl")
    if not os.path.exists(path):
        return tests
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            old = tests.get(rec["test"])
            if old is None or rank[rec["outcome"]] > rank[old["outcome"]]:
                if old is not None:
                    rec["uses"] = sorted(
                        set(map(tuple, rec["uses"])) | set(map(tuple, old["uses"]))
                    )
                tests[rec["test"]] = rec
    return tests


def row_keys(test_id: str, rec: dict) -> list[tuple[str, str]]:
    """Where a test counts: each (sensor, attach type) it loaded, or, for a
    test that loads nothing in-process (a `vigil` subprocess), its file."""
    uses = {(sensor, f"{feature} {target}") for sensor, feature, target in rec["uses"]}
    if uses:
        return sorted(uses)
    return [(test_id.split("::")[0].removeprefix("tests/"), "(no sensor loaded in-process)")]


def print_matrix(runs: list[dict]) -> int:
    all_results = [read_results(r) for r in runs]
    cells: dict[tuple[str, str], list[list[str]]] = defaultdict(lambda: [[] for _ in runs])
    # every attach point a sensor declares has a row, tested or not ("-"):
    # a new sensor or alternative shows up here without editing this file
    for name, sensor in sensors.all_sensors().items():
        for hook in sensor.hooks:
            for alt in hook.alternatives:
                cells[(name, f"{alt.feature} {alt.target}")]
    for i, results in enumerate(all_results):
        for test_id, rec in results.items():
            if rec["outcome"] == "tcg_slow":
                continue
            for key in row_keys(test_id, rec):
                cells[key][i].append(rec["outcome"])

    def cell(outcomes: list[str]) -> str:
        if not outcomes:
            return "-"
        bad = sum(o in ("failed", "error") for o in outcomes)
        ran = sum(o != "skipped" for o in outcomes)
        if bad:
            return f"FAIL {bad}/{ran}"
        return f"ok {ran}" if ran else f"skip {len(outcomes)}"

    names = [r["name"] for r in runs]
    widths = [max(14, len(n)) for n in names]
    print()
    print(f"{'SENSOR':<20} {'ATTACH':<44} " + " ".join(f"{n:<{w}}" for n, w in zip(names, widths)))
    for (sensor, attach), per_kernel in sorted(cells.items()):
        row = " ".join(f"{cell(o):<{w}}" for o, w in zip(per_kernel, widths))
        print(f"{sensor[:20]:<20} {attach[:44]:<44} {row}")
    print()
    total = {"passed": 0, "failed": 0, "skipped": 0}
    for run, results in zip(runs, all_results):
        counts = defaultdict(int)
        for rec in results.values():
            counts[rec["outcome"]] += 1
        failed = counts["failed"] + counts["error"]
        total["passed"] += counts["passed"]
        total["failed"] += failed
        total["skipped"] += counts["skipped"]
        state = (
            ""
            if run["rc"] in (0, 1)
            else f"  (pytest exit {run['rc']}: see {run['dir']}/console.log)"
        )
        print(
            f"{run['name']:<28} {counts['passed']:>4} passed {failed:>3} failed "
            f"{counts['skipped']:>3} skipped  {run['time'] / 60:5.1f} min{state}"
        )
        for test_id, rec in sorted(results.items()):
            if rec["outcome"] in ("failed", "error"):
                print(f"    {rec['outcome'].upper()} {test_id}")
    slow: dict[str, list[str]] = defaultdict(list)  # reason -> tests
    for test_id in sorted({t for res in all_results for t in res}):
        rec = next(res[test_id] for res in all_results if test_id in res)
        if rec["outcome"] == "tcg_slow":
            slow[rec["reason"]].append(test_id)
    for reason, tests in slow.items():
        print(
            f"\nleft out of the matrix (tcg_slow, timing only; the host suite runs them): {reason}"
        )
        for test_id in tests:
            print(f"    {test_id}")
    bad_runs = [r for r in runs if r["rc"] != 0]
    print()
    print(f"{total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    # an empty or crashed run (no results, pytest exit 5, a guest that never finished) fails too
    return 1 if total["failed"] or bad_runs or not all(all_results) else 0


def last_runs(wanted: list[tuple[str, str]], host: bool) -> list[dict]:
    """The runs left under OUT by earlier invocations (--report-only)."""
    runs = []
    for name, vmlinuz in ([("host", "")] if host else []) + wanted:
        out = os.path.join(OUT, name)
        if not os.path.exists(os.path.join(out, "results.jsonl")):
            continue
        try:
            with open(os.path.join(out, "rc")) as f:
                rc = int(f.read())
        except (OSError, ValueError):
            rc = -1
        label = f"{os.uname().release} (host)" if name == "host" else os.path.basename(vmlinuz)
        runs.append({"name": label.removeprefix("vmlinuz-"), "rc": rc, "dir": out, "time": 0.0})
    return runs


def main() -> int:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--kernel",
        action="append",
        help="Only this kernel of the matrix, or `host` (repeatable; default: all and the host).",
    )
    ap.add_argument(
        "--parallel",
        type=int,
        default=2,
        help="Guests booted at once (default 2; each has 2 vCPUs).",
    )
    ap.add_argument("--out", help=f"Results and logs under this directory (default {OUT}).")
    ap.add_argument(
        "--report-only", action="store_true", help="Print the matrix of the last runs; run nothing."
    )
    # anything else goes to pytest: test files, -k EXPR, -x ...
    args, extra = ap.parse_known_args()
    if args.out:
        OUT = os.path.abspath(args.out)
    wanted = kernels()
    host = True
    if args.kernel:
        unknown = set(args.kernel) - {n for n, _ in wanted} - {"host"}
        if unknown:
            sys.exit(f"kernel_matrix: no kernel {', '.join(sorted(unknown))} in the matrix")
        host = "host" in args.kernel
        wanted = [(n, v) for n, v in wanted if n in args.kernel]
    if args.report_only:
        return print_matrix(last_runs(wanted, host))
    runs = []
    if host:
        print(f"[matrix] host {os.uname().release}: pytest -m '{SELECTION}'", flush=True)
        runs.append(run_host(extra))
        print(
            f"[matrix]   done in {runs[-1]['time']:.0f} s (pytest exit {runs[-1]['rc']})",
            flush=True,
        )

    # The guests run side by side: much of a test is waiting (for a child,
    # an event, a prompt), which the other guest's CPU time fills.
    def one(kernel: tuple[str, str]) -> dict:
        name, vmlinuz = kernel
        print(f"[matrix] {name}: booting {vmlinuz} (TCG)", flush=True)
        run = run_guest(name, vmlinuz, extra)
        print(f"[matrix] {name}: done in {run['time']:.0f} s (pytest exit {run['rc']})", flush=True)
        return run

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        runs.extend(pool.map(one, wanted))
    return print_matrix(runs)


if __name__ == "__main__":
    sys.exit(main())
