"""Loads sensors into the kernel and reads their events.

One :class:`Session` holds every loaded sensor.  All objects write into one
ring buffer, created here and handed to each object before load, so events
of all sensors arrive in a single order (a fork before the exec before the
exit of the same process) and one drain loop serves them all.

The drain loop waits on the ring's fd with a timeout: the BPF side only
wakes us once `wakeup_bytes` are pending, so under load we wake rarely and
read thousands of records per drain, and when quiet the timeout bounds how
long a lone event waits.
"""

from __future__ import annotations

import os
import select
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

from . import _libbpf as bpf
from . import identity, kernel, paths, records, sensors
from .errors import ConfigError, LayoutError, VigilError
from .sensors import Attach, Sensor

DEFAULT_RING_BYTES = 16 << 20
# enum vigil_stat (bpf/vigil.h): the counters each kind keeps in vigil_stats,
# at slot kind * VIGIL_STAT_MAX + stat; read from the object's BTF.
STAT_ENUM = "vigil_stat"
STAT_PREFIX = "VIGIL_STAT_"


def stat_slots(btf: bpf.Btf) -> tuple[int, dict[str, int]]:
    """(slots per kind, {stat name: index}) from `enum vigil_stat`."""
    values = dict(records.enum_values(btf, STAT_ENUM))
    width = values.pop(f"{STAT_PREFIX}MAX")
    return width, {n.removeprefix(STAT_PREFIX).lower(): v for n, v in values.items()}


@dataclass(frozen=True)
class Choice:
    sensor: str
    hook: str
    feature: str
    target: str
    programs: tuple[str, ...]
    rodata: tuple[tuple[str, int], ...] = ()


def usable(attach: Attach) -> bool:
    return kernel.available(attach.feature) and kernel.target_exists(attach.feature, attach.target)


def choose(
    sensor: Sensor, forced: dict[str, str] | None = None, taken: frozenset[str] = frozenset()
) -> list[Choice]:
    """The way each of the sensor's hooks is attached on this kernel.

    The first usable alternative wins; `forced` ({hook: "type"} or
    {hook: "type:target"}) picks another one (tests use it to check every mode reports the same events).
    Where the first usable alternative is a shared program's (it sets
    rodata), one whose programs are `taken` already (chosen by another
    sensor of the same object) is used instead: one program serves both.
    """
    out = []
    for hook in sensor.hooks:
        want = (forced or {}).get(hook.name)
        if want is not None:
            # "feature" or "feature:target" when one type has several targets
            feature, _, target = want.partition(":")
            picks = [
                a
                for a in hook.alternatives
                if a.feature == feature and (not target or a.target == target)
            ]
            if not picks:
                raise ConfigError(f"hook {hook.name} of {sensor.name} has no {want} mode")
        else:
            picks = [a for a in hook.alternatives if usable(a)]
        if not picks and hook.optional and want is None:
            continue  # extra detail this kernel cannot give; the sensor still works
        if not picks:
            tried = ", ".join(f"{a.feature} {a.target}" for a in hook.alternatives)
            raise VigilError(f"sensor {sensor.name}: cannot hook {hook.name} here (tried {tried})")
        a = picks[0]
        # a program two sensors share (alternatives that set its job in
        # rodata) is attached once, the way the first sensor chose: only
        # among such alternatives, never over a better hook of its own
        shared = [s for s in picks if s.rodata and taken.issuperset(s.programs)]
        if a.rodata and shared:
            a = shared[0]
        out.append(Choice(sensor.name, hook.name, a.feature, a.target, a.programs, a.rodata))
    return out


def attach(prog: bpf.Program, choice: Choice) -> bpf.Link:
    """Attach one program the way its chosen attach type needs."""
    if choice.feature == "cgroup":
        root = kernel.cgroup2_root()
        if root is None:
            raise VigilError("cgroup socket hooks need a cgroup v2 hierarchy; none is mounted")
        return prog.attach_cgroup(root)
    if choice.feature in ("uprobe", "uretprobe"):
        from .elf import symbol_offset

        path, _, symbol = choice.target.rpartition(":")  # "PATH:SYMBOL"
        # SEC("uretprobe") programs run at the function's return
        retprobe = choice.feature == "uretprobe" or prog.section.startswith("uretprobe")
        return prog.attach_uprobe(path, symbol_offset(path, symbol), retprobe=retprobe)
    return prog.attach()  # SEC() names the target: tracepoint, raw_tp, tp_btf, kprobe...


def _rodata_vars(obj: bpf.Object) -> dict[str, tuple[int, int, int]]:
    """name -> (type id, offset, size) of every .rodata variable, from BTF."""
    return records.datasec(obj.btf(), ".rodata")


def set_rodata(obj: bpf.Object, values: dict) -> None:
    """Write `.rodata` constants (filters, knobs) between open and load.

    Any C type: ints, arrays (a list, or bytes/str for char arrays) and
    structs (a dict by member name), encoded from the object's BTF.
    """
    if not values:
        return
    btf = obj.btf()
    layout = _rodata_vars(obj)
    ro = next((m for m in obj.maps() if m.name.endswith(".rodata")), None)
    if ro is None:
        raise ConfigError(f"{obj.name}: object has no .rodata to set {', '.join(values)}")
    view = ro.data_view()
    for name, value in values.items():
        if name not in layout:
            raise ConfigError(f"{obj.name}: no .rodata variable {name!r}")
        type_id, offset, size = layout[name]
        try:
            raw = records.encode(btf, type_id, value)
        except LayoutError as err:
            raise ConfigError(f"{obj.name}: {name}: {err}") from None
        if len(raw) != size:
            raise ConfigError(f"{obj.name}: {name} encodes to {len(raw)} bytes, not {size}")
        view[offset : offset + size] = raw


def _boot_offset_ns() -> int:
    """Unix epoch minus CLOCK_BOOTTIME, the clock BPF stamps events with."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@dataclass
class _Loaded:
    """One object loaded and attached for some of its sensors."""

    obj: bpf.Object
    chosen: list[Choice]
    links: list[bpf.Link]

    def close(self) -> None:
        bpf.destroy_links(self.links)
        self.obj.close()


def _open_group(group: list[Sensor], rodata: dict, forced: dict, session: Session) -> _Loaded:
    """Open, configure, load and attach one object for `group`; on any
    failure nothing of it stays in the kernel."""
    obj = bpf.Object(paths.bpf_object(group[0].object))
    loaded = _Loaded(obj, [], [])
    try:
        for s in group:
            taken = frozenset(p for c in loaded.chosen for p in c.programs)
            loaded.chosen.extend(choose(s, forced, taken))
        names = {p for c in loaded.chosen for p in c.programs}
        for prog in obj.programs():
            prog.autoload = prog.name in names
        obj.map("events").reuse_fd(session._ring_fd)
        obj.map("vigil_seq").reuse_fd(session._seq_fd)
        wanted = {"wakeup_bytes": session.wakeup_bytes, "quiet_wake_ns": session.quiet_wake_ns}
        for s in group:
            wanted.update({k: v() if callable(v) else v for k, v in s.rodata.items()})
            if session._monitor:
                wanted.update(s.monitor_rodata)
        for c in loaded.chosen:
            wanted.update(c.rodata)
        declared = _rodata_vars(obj)
        wanted.update({k: v for k, v in rodata.items() if k in declared})
        set_rodata(obj, wanted)
        obj.load()
        for fill in dict.fromkeys(s.after_load for s in group if s.after_load):
            fill(obj, session.sensor_options)
        attached: set[str] = set()
        for c in loaded.chosen:
            for name in c.programs:
                if name not in attached:  # a program two sensors share runs once
                    attached.add(name)
                    loaded.links.append(attach(obj.program(name), c))
    except BaseException:
        loaded.close()
        raise
    return loaded


class Session:
    """Sensors loaded and attached, sharing one ring buffer."""

    def __init__(
        self,
        sensor_names: Iterable[str],
        *,
        ring_bytes: int = DEFAULT_RING_BYTES,
        wakeup_bytes: int | None = None,
        latency: float | None = None,
        rodata: dict[str, int] | None = None,
        choices: dict[str, str] | None = None,
        monitor: bool = False,
        skip_unloadable: bool = False,
        sensor_options: dict | None = None,
    ):
        """`rodata` goes to every object that declares the variable; with
        `monitor`, each sensor's own `monitor_rodata` goes to its object.

        With `latency` (s), the reader may sleep past it once the ring is
        quiet: the first record after a quiet spell wakes it (poll_wait).

        `choices` forces a hook's attach type ({hook: "raw_tp"}): tests use it
        to exercise each attach mode the kernel allows.

        With `skip_unloadable`, a sensor this kernel refuses (no usable hook,
        verifier rejection, attach failure) is left out and named in
        `skipped` ({sensor: reason}); the others run.  Bad input
        (ConfigError) still fails, and so does a session left with no sensor.
        """
        self.sensors = [sensors.get(n) for n in dict.fromkeys(sensor_names)]
        self.skip_unloadable = skip_unloadable
        self.skipped: dict[str, str] = {}
        if ring_bytes & (ring_bytes - 1) or ring_bytes < 4096:
            raise ConfigError(f"ring size {ring_bytes} must be a power of two >= 4096")
        self.ring_bytes = ring_bytes
        # Default: wake the reader when a quarter of the ring is full.
        self.wakeup_bytes = ring_bytes // 4 if wakeup_bytes is None else wakeup_bytes
        # half the latency: a record made just before the reader stops polling wakes it
        self.latency = latency
        self.quiet_wake_ns = int(latency * 5e8) if latency and self.wakeup_bytes else 0
        self.decoder = records.Decoder(_boot_offset_ns())
        self.choices: list[Choice] = []
        self._objects: list[bpf.Object] = []
        self._object_kinds: dict[str, list[str]] = {}  # object -> kinds its sensors emit
        # object -> (stat map, value bytes, slots per kind, {stat: index}): derived from
        # BTF once; kernel_stats runs every status tick
        self._stat_plan: dict[str, tuple] = {}
        self._links: list[bpf.Link] = []
        self._finish = {}
        self._ring_fd = -1
        self._seq_fd = -1
        self.reader: bpf.RingReader | None = None
        self._epoll: select.epoll | None = None
        self._monitor = monitor
        self.sensor_options = sensor_options or {}
        try:
            self._start(rodata or {}, choices or {})
        except BaseException:
            self.close()
            raise

    def _start(self, rodata: dict[str, int], forced: dict[str, str]) -> None:
        kernel.ensure_tracefs()
        by_object: dict[str, list[Sensor]] = {}
        for s in self.sensors:
            by_object.setdefault(s.object, []).append(s)
            for kind in s.kinds:
                self._finish[kind] = s.finish
        self._ring_fd = bpf.map_create(
            bpf.BPF_MAP_TYPE_RINGBUF, "vigil_events", 0, 0, self.ring_bytes
        )
        self._seq_fd = identity.create_seq_map()
        for group in by_object.values():
            if self.skip_unloadable:
                self._load_what_loads(group, rodata, forced)
            else:
                self._load_group(group, rodata, forced)
        if self.skipped:
            self.sensors = [s for s in self.sensors if s.name not in self.skipped]
            if not self.sensors:
                reasons = "; ".join(f"{n}: {why}" for n, why in self.skipped.items())
                raise VigilError(f"no sensor could be loaded here ({reasons})")
        unknown = set(rodata) - {k for o in self._objects for k in _rodata_vars(o)}
        if unknown:
            raise ConfigError(f"no loaded sensor takes {', '.join(sorted(unknown))}")
        self.reader = bpf.ring_reader(self._ring_fd, self.ring_bytes)
        self._epoll = select.epoll()
        self._epoll.register(self._ring_fd, select.EPOLLIN)

    def _load_what_loads(self, group: list[Sensor], rodata: dict, forced: dict) -> None:
        """Load one object's sensors, leaving out those this kernel refuses.

        Sensors sharing an object share its maps, so they must load as one
        object: when the whole group fails, sensors are added one at a time
        (a trial load each, only on this failure path) to find the ones
        that load together.
        """
        try:
            self._load_group(group, rodata, forced)
            return
        except ConfigError:
            raise
        except VigilError as err:
            if len(group) == 1:
                self.skipped[group[0].name] = str(err)
                return
        kept: list[Sensor] = []
        for s in group:
            try:
                trial = _open_group([*kept, s], rodata, forced, self)
            except ConfigError:
                raise
            except VigilError as err:
                self.skipped[s.name] = str(err)
                continue
            trial.close()
            kept.append(s)
        if kept:
            self._load_group(kept, rodata, forced)

    def _load_group(self, group: list[Sensor], rodata: dict, forced: dict) -> None:
        """Load and attach the sensors of one object (all or nothing)."""
        loaded = _open_group(group, rodata, forced, self)
        self._objects.append(loaded.obj)
        self._object_kinds[loaded.obj.name] = [k for s in group for k in s.kinds]
        self.decoder.add_btf(loaded.obj.btf())
        self._links.extend(loaded.links)
        self.choices.extend(loaded.chosen)

    # -- reading -----------------------------------------------------------------
    def refresh_clock(self) -> None:
        """Follow wall-clock steps (NTP, settimeofday) in event timestamps."""
        self.decoder.set_boot_offset(_boot_offset_ns())

    @property
    def ring_fd(self) -> int:
        """The ring's fd: readable past the wake-up threshold (an event loop polls it)."""
        return self._ring_fd

    def wake_on(self, fd: int) -> None:
        """Make wait() also return when `fd` is readable (a signal's wake-up pipe)."""
        self._epoll.register(fd, select.EPOLLIN)

    def poll_wait(self, latency: float, idle: float = 1.0) -> float:
        """How long the reader may sleep before its next drain: `latency`
        while records flow (a record too soon after the kernel's last forced
        wake-up wakes no one), `idle` once none came for twice quiet_wake_ns
        (the first record after that wakes us: bpf/common.bpf.h)."""
        if not self.quiet_wake_ns or self.reader.quiet_for() < 4 * self.quiet_wake_ns / 1e9:
            return latency
        return max(idle, latency)

    def wait(self, timeout: float) -> None:
        """Block until the kernel wakes us (or a wake_on fd) or `timeout` s pass."""
        if self.reader.pending_bytes() == 0:
            try:
                self._epoll.poll(timeout)
            except InterruptedError:
                pass

    def read(self, until: int | None = None, limit: int = 1 << 20) -> list[dict]:
        """Drain the ring: pending records (up to about `limit` bytes, before
        the producer position `until` if given), decoded, oldest first."""
        # bounded: a backlog waits in the kernel's ring, not in our memory
        recs = self.reader.drain(limit, until)
        if not recs:
            return []
        return self.decoder.decode_batch(recs, self._finish)

    # -- maps ---------------------------------------------------------------------
    def map(self, name: str) -> bpf.Map:
        """A map of a loaded object by name (counting tools read theirs)."""
        for obj in self._objects:
            for m in obj.maps():
                if m.name == name:
                    return m
        raise ConfigError(f"no loaded sensor has a map {name!r}")

    def btf_of(self, map_name: str) -> bpf.Btf:
        """The BTF of the object holding `map_name` (to decode its keys)."""
        return self.map(map_name).obj.btf()

    # -- counters -------------------------------------------------------------------
    def kernel_stats(self) -> dict[str, dict[str, int]]:
        """Per record kind: emitted, lost (ring full) and partial, from the kernel."""
        out: dict[str, dict[str, int]] = {}
        ncpu = bpf.num_possible_cpus()
        kind_ids = {layout.kind: kind_id for kind_id, layout in self.decoder.layouts.items()}
        for obj in self._objects:
            plan = self._stat_plan.get(obj.name)
            if plan is None:
                m = obj.map("vigil_stats")
                size = ((m.value_size + 7) // 8) * 8 * ncpu
                plan = self._stat_plan[obj.name] = (m, size, *stat_slots(obj.btf()))
            m, size, width, stats = plan
            for kind in self._object_kinds[obj.name]:
                kind_id = kind_ids[kind]
                row = out.setdefault(kind, dict.fromkeys(stats, 0))
                for stat, i in stats.items():
                    raw = bpf.map_lookup(m.fd, struct.pack("<I", kind_id * width + i), size)
                    if raw:
                        row[stat] += sum(v for (v,) in struct.iter_unpack("<Q", raw))
        return out

    def close(self) -> None:
        bpf.destroy_links(self._links)
        self._links.clear()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        for obj in self._objects:
            obj.close()
        self._objects.clear()
        if self._ring_fd >= 0:
            os.close(self._ring_fd)
            self._ring_fd = -1
        if self._seq_fd >= 0:
            os.close(self._seq_fd)
            self._seq_fd = -1

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
