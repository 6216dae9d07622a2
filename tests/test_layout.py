"""Record layouts are declared once, in C; Python derives them from BTF.

Two proofs: (1) every field offset and size Python decodes with equals what
a C compiler computes from the same headers; (2) adding a field in C and
rebuilding changes nothing in Python, and decoding still works.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from helpers import ROOT, execs_of, pump_until, start_agent, unique_marker
from vigil import _libbpf as bpf
from vigil import paths, records

BPF_SRC = os.path.join(ROOT, "bpf")
# every object with a record header of its own name (bpf/<name>.bpf.c + <name>.h)
OBJECTS = {
    name.removesuffix(".bpf.c"): (name.removesuffix(".bpf.c") + ".h",)
    for name in sorted(os.listdir(BPF_SRC))
    if name.endswith(".bpf.c") and os.path.exists(os.path.join(BPF_SRC, name[:-6] + ".h"))
}


def _layouts():
    out = {}
    for obj_name in OBJECTS:
        with bpf.Object(paths.bpf_object(obj_name)) as obj:
            out.update({lay.kind: lay for lay in records.layouts_of(obj.btf()).values()})
    return out


def test_every_field_matches_the_c_compiler(tmp_path):
    layouts = _layouts()
    assert {"exec", "fork", "exit"} <= set(layouts)
    lines = []
    for kind, lay in layouts.items():
        fields = list(lay.fields) + ([lay.tail] if lay.tail else [])
        for f in fields:
            member = f.path
            lines.append(
                f'printf("{kind} {f.name} %zu %zu\\n", offsetof(struct {lay.struct_name}, {member}),'
                f" sizeof(((struct {lay.struct_name} *)0)->{member}));"
            )
        lines.append(f'printf("{kind} SIZE %zu 0\\n", sizeof(struct {lay.struct_name}));')
    # every record header, also those another object includes (module.bpf.c: syscall32.h)
    headers = sorted(
        n for n in os.listdir(BPF_SRC) if n.endswith(".h") and not n.endswith(".bpf.h")
    )
    includes = "".join(f'#include "{h}"\n' for h in headers)
    src = tmp_path / "offsets.c"
    src.write_text(
        "#include <linux/types.h>\n#include <stddef.h>\n#include <stdio.h>\n"
        + includes
        + "int main(void) {\n"
        + "\n".join(lines)
        + "\nreturn 0;\n}\n"
    )
    exe = tmp_path / "offsets"
    # build/bpf holds the generated syscalls.h (enum vigil_syscall)
    build = os.path.dirname(paths.bpf_object("exec"))
    subprocess.run(["gcc", "-I", BPF_SRC, "-I", build, "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    seen = 0
    for line in out.splitlines():
        kind, name, off, size = line.split()
        lay = layouts[kind]
        if name == "SIZE":
            assert lay.size == int(off), kind
            continue
        f = lay.field(name)
        assert (f.offset, f.size) == (int(off), int(size)), f"{kind}.{name}"
        seen += 1
    assert seen >= 20


def test_padding_is_not_decoded():
    for lay in _layouts().values():
        assert not [f for f in lay.fields if f.name.startswith("__")]


@pytest.mark.kernel
def test_a_field_added_in_c_is_decoded_with_no_python_change(tmp_path, monkeypatch):
    before = _layouts()["exec"]
    src = tmp_path / "bpf"
    shutil.copytree(BPF_SRC, src)
    header = src / "exec.h"
    text = header.read_text()
    # a new field before filename: every later offset moves by 8
    new, n = re.subn(r"(\n(\s*)char filename\[)", r"\n\2__u64 added_for_test;\1", text, count=1)
    assert n == 1
    header.write_text(new)
    out = tmp_path / "out"
    out.mkdir()
    for unchanged in ("vmlinux.h", "probe.bpf.o"):  # probe.bpf.o: the kernel feature probe
        shutil.copy(os.path.join(paths.bpf_dir(), unchanged), out / unchanged)
    # only the object under test: the others do not change (and clang is
    # slow in `make test-kernels`' emulated guests)
    subprocess.run(
        ["make", "-s", "-C", str(src), f"OUTPUT={out}", str(out / "exec.bpf.o")], check=True
    )
    monkeypatch.setenv("VIGIL_BPF_DIR", str(out))

    agent, sink = start_agent(["exec"], enrich=False)
    try:
        lay = next(iter(agent.session.decoder.layouts.values()))
        assert lay.field("added_for_test").size == 8
        assert lay.field("filename").offset == before.field("filename").offset + 8
        marker = unique_marker()
        subprocess.run(["/bin/true", "x", marker], check=True)
        events = pump_until(agent, sink, lambda evs: execs_of(evs, marker=marker))
        (ev,) = execs_of(events, marker=marker)
        assert ev["args"] == [b"/bin/true", b"x", marker]
        assert ev["filename"] == b"/bin/true"
        assert "added_for_test" in ev
    finally:
        agent.session.close()


def test_kinds_and_flags_come_from_btf():
    with bpf.Object(paths.bpf_object("exec")) as obj:
        btf = obj.btf()
        kinds = records.enum_values(btf, records.KIND_ENUM)
        flags = records.flag_names(btf)
    assert kinds["VIGIL_EV_EXEC"] == 1
    assert "truncated" in flags.values() and "partial" in flags.values()
