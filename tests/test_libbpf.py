"""The ctypes binding against the real libbpf and kernel."""

from __future__ import annotations

import struct

import pytest

from vigil import _libbpf as bpf
from vigil import paths
from vigil.errors import BpfError

pytestmark = pytest.mark.kernel


def test_hash_map_round_trip():
    fd = bpf.map_create(bpf.BPF_MAP_TYPE_HASH, "t", 4, 8, 16)
    key = struct.pack("<I", 7)
    assert bpf.map_lookup(fd, key, 8) is None
    bpf.map_update(fd, key, struct.pack("<Q", 42))
    assert struct.unpack("<Q", bpf.map_lookup(fd, key, 8)) == (42,)
    assert bpf.map_keys(fd, 4) == [key]
    assert bpf.map_delete(fd, key) is True
    assert bpf.map_delete(fd, key) is False


def test_errors_name_the_operation_and_errno(tmp_path):
    with pytest.raises(BpfError) as info:
        bpf.Object(str(tmp_path / "missing.bpf.o"))
    assert "missing.bpf.o" in str(info.value) and "errno 2" in str(info.value)

    with bpf.Object(paths.bpf_object("probe")) as obj:
        for prog in obj.programs():
            prog.autoload = prog.name == "probe_tracepoint"
        obj.load()
        prog = obj.program("probe_tracepoint")
        with pytest.raises(BpfError) as info:
            prog.attach_tracepoint("syscalls", "sys_enter_no_such_call")
        msg = str(info.value)
        assert "probe_tracepoint" in msg and "sys_enter_no_such_call" in msg
        assert "No such file or directory" in msg
        link = prog.attach_tracepoint("syscalls", "sys_enter_getppid")
        link.destroy()


def test_verifier_rejection_is_an_error_with_libbpf_detail():
    with bpf.Object(paths.bpf_object("probe")) as obj:
        for prog in obj.programs():
            prog.autoload = prog.name == "probe_lsm"
        try:
            obj.load()
        except BpfError as err:  # where BPF-LSM is refused, as on this kernel
            assert "load BPF object probe" in str(err)
            assert err.errno > 0
            assert "probe_lsm" in err.detail


def test_rodata_is_set_before_load():
    from vigil.loader import _rodata_vars, set_rodata

    with bpf.Object(paths.bpf_object("exec")) as obj:
        layout = _rodata_vars(obj)
        assert {"targ_uid", "wakeup_bytes"} <= set(layout)
        set_rodata(obj, {"targ_uid": 1234})
        ro = next(m for m in obj.maps() if m.name.endswith(".rodata"))
        _type, off, size = layout["targ_uid"]
        assert int.from_bytes(ro.data_view()[off : off + size], "little") == 1234


def test_rodata_arrays_are_encoded_from_btf():
    from vigil.loader import _rodata_vars, set_rodata

    with bpf.Object(paths.bpf_object("connect")) as obj:
        set_rodata(obj, {"targ_ports": [80, 443]})
        ro = next(m for m in obj.maps() if m.name.endswith(".rodata"))
        _type, off, size = _rodata_vars(obj)["targ_ports"]
        raw = bytes(ro.data_view()[off : off + size])
        assert struct.unpack(f"<{size // 2}H", raw) == (80, 443) + (0,) * (size // 2 - 2)
        with pytest.raises(Exception, match="targ_ports"):
            set_rodata(obj, {"targ_ports": list(range(size // 2 + 1))})
