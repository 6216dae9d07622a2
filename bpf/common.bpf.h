/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * What every sensor object shares: the event ring (one ring for all
 * objects: user space creates it once and hands its fd to each object, so
 * events of all sensors arrive in one order), the per-object counters, the
 * header filler and the wake-up policy.
 */
#ifndef __VIGIL_COMMON_BPF_H
#define __VIGIL_COMMON_BPF_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "vigil.h"
#include "core_fixes.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Size is set by the loader before load; this is only a default. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VIGIL_KIND_MAX * VIGIL_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} vigil_stats SEC(".maps");

/*
 * Record numbers, one counter per CPU (vigil_header.seq).  Created once by
 * user space and shared by every object, like the ring, and seeded there
 * with CLOCK_BOOTTIME ns.  Per CPU rather than one global counter: a
 * global atomic is a cache line every CPU fights over on every event of a
 * storm; a per-CPU one is never contended.  A number is taken as the
 * record is queued (or fails to be), so within one CPU the numbers follow
 * ring order and a missing one is a record the ring lost.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} vigil_seq SEC(".maps");

static __always_inline __u64 next_seq(void)
{
	__u32 zero = 0;
	__u64 *v = bpf_map_lookup_elem(&vigil_seq, &zero);

	/* atomic although per CPU: a preempted program may share the slot */
	return v ? __sync_fetch_and_add(v, 1) : 0;
}

static __always_inline void stamp_seq(struct vigil_header *hdr)
{
	hdr->cpu = bpf_get_smp_processor_id();
	hdr->seq = next_seq();
}

/*
 * Wake the reader only when the pending data crosses this many bytes; below
 * it the reader drains on its own timer, and past it the reader is awake or
 * about to be (it never sleeps with data pending).  A wake-up per event
 * costs the traced workload ~20% on accept() storms; forcing one on every
 * record past the threshold cost 4 us per accept.  0 wakes on every record.
 */
const volatile __u64 wakeup_bytes = 0;

/*
 * And wake it for the first record after a quiet spell: a reader that found
 * the ring empty for its latency sleeps until its own timers (a second or
 * so) instead of polling every latency, so a record made then must wake it.
 * A record made less than `quiet_wake_ns` after the last such wake-up is
 * drained by the reader's polling, which goes on for twice that after any
 * record (Session.poll_wait).  Each object keeps its own time: more
 * wake-ups, never fewer.  At most one forced wake-up per object per
 * quiet_wake_ns in a storm.  0: the reader polls; no clock read here.
 */
const volatile __u64 quiet_wake_ns = 0;
__u64 last_wake_ns = 0;

static __always_inline void stat_inc(__u32 kind, __u32 stat)
{
	__u32 slot = (kind % VIGIL_KIND_MAX) * VIGIL_STAT_MAX + stat;
	__u64 *v = bpf_map_lookup_elem(&vigil_stats, &slot);

	if (v)
		*v += 1;	/* per-CPU slot: no atomic needed */
}

/* `pending`: bytes in the ring once this record of `size` is committed. */
static __always_inline __u64 submit_flags(__u64 pending, __u64 size)
{
	/* in the ring a record takes an 8-byte header, rounded up to 8 */
	__u64 taken = (size + 15) & ~7ULL;

	if (!wakeup_bytes)
		return 0;
	if (pending >= wakeup_bytes && pending - taken < wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	if (quiet_wake_ns) {
		__u64 now = bpf_ktime_get_ns();

		if (now - last_wake_ns >= quiet_wake_ns) {
			last_wake_ns = now;
			return BPF_RB_FORCE_WAKEUP;
		}
	}
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void fill_header(struct vigil_header *hdr, __u32 kind)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid();
	__u64 ugid = bpf_get_current_uid_gid();

	hdr->ts_ns = bpf_ktime_get_boot_ns();
	hdr->cgroup_id = bpf_get_current_cgroup_id();
	hdr->kind = kind;
	hdr->flags = 0;
	hdr->pid = id >> 32;
	hdr->tid = (__u32)id;
	hdr->ppid = BPF_CORE_READ(task, real_parent, tgid);
	hdr->uid = (__u32)ugid;
	hdr->gid = ugid >> 32;
	hdr->cpu = 0;
	hdr->seq = 0;	/* taken when the record is queued (stamp_seq) */
	hdr->start_time = task_start_boottime(BPF_CORE_READ(task, group_leader));
	hdr->parent_start_time = task_start_boottime(BPF_CORE_READ(task, real_parent, group_leader));
	bpf_get_current_comm(hdr->comm, sizeof(hdr->comm));
}

/*
 * Who may fill the one ring how far.  One ring keeps one global order (the
 * process table needs fork before exec before exit), so a flood of one
 * kind is kept from blinding the others by a reservation watermark per
 * class instead of a ring per class: a record of a class is not written
 * once the ring holds more than the class's share, and is counted LOST for
 * its kind.  Whatever any user can produce by the hundred thousand per
 * second (loopback connect/accept, bind, retransmits) stops at half the
 * ring; every other kind at three quarters; the records the process table
 * is built from may use the whole ring.  So under a storm of bulk kinds
 * the reader still has half the ring of room for lifecycle records and a
 * quarter for the other security kinds between two drains.
 *
 * The default (reserve_event, output_event) is VIGIL_RING_SECURITY: a new
 * sensor is protected without knowing about this; high-volume sensors opt
 * into VIGIL_RING_BULK at their call sites, process lifecycle into
 * VIGIL_RING_LIFECYCLE.  docs/events.md lists the kinds of each class.
 */
enum vigil_ring_class {
	VIGIL_RING_SECURITY = 0,	/* up to 3/4 of the ring (the default) */
	VIGIL_RING_BULK = 1,		/* up to 1/2: floodable kinds, shed first */
	VIGIL_RING_LIFECYCLE = 2,	/* the whole ring: exec, fork, exit */
};

/*
 * May a record of `size` bytes of class `cls` be written now?  Checked
 * before the reservation, so a shed record takes no ring space; two CPUs
 * may both pass at the edge, overshooting the share by one record each,
 * which the next class's margin absorbs.
 */
static __always_inline bool ring_admits(enum vigil_ring_class cls, __u64 size)
{
	__u64 used, ring;

	if (cls == VIGIL_RING_LIFECYCLE)
		return true;	/* the ring's own limit applies */
	used = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	ring = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);
	if (cls == VIGIL_RING_BULK)
		return used + size <= ring / 2;
	return used + size <= ring - ring / 4;
}

/* Reserve a fixed-size record; a full ring (or share) is counted, never silent. */
static __always_inline void *reserve_event_class(__u32 kind, __u64 size,
						 enum vigil_ring_class cls)
{
	void *e = NULL;

	if (ring_admits(cls, size))
		e = bpf_ringbuf_reserve(&events, size, 0);
	if (!e) {
		stat_inc(kind, VIGIL_STAT_LOST);
		next_seq();	/* the lost record's number: a gap the reader sees */
	}
	return e;
}

static __always_inline void *reserve_event(__u32 kind, __u64 size)
{
	return reserve_event_class(kind, size, VIGIL_RING_SECURITY);
}

static __always_inline void submit_event(struct vigil_header *hdr, __u64 size)
{
	__u32 kind = hdr->kind;
	/* the reserved record already counts as pending */
	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);

	stamp_seq(hdr);
	bpf_ringbuf_submit(hdr, submit_flags(pending, size));
	stat_inc(kind, VIGIL_STAT_EMITTED);
}

/* Copy out a record built elsewhere (variable length: size <= its struct). */
static __always_inline void output_event_class(struct vigil_header *hdr, __u64 size,
					       enum vigil_ring_class cls)
{
	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + size;

	stamp_seq(hdr);	/* a failed output leaves its number unused: a gap */
	if (!ring_admits(cls, size) ||
	    bpf_ringbuf_output(&events, hdr, size, submit_flags(pending, size)))
		stat_inc(hdr->kind, VIGIL_STAT_LOST);
	else
		stat_inc(hdr->kind, VIGIL_STAT_EMITTED);
}

static __always_inline void output_event(struct vigil_header *hdr, __u64 size)
{
	output_event_class(hdr, size, VIGIL_RING_SECURITY);
}

#define VIGIL_EEXIST 17	/* include/uapi/asm-generic/errno-base.h */

/*
 * De-duplication: whether `key` was reported already (a repeat), and
 * remember it if not.  Lookup first: a repeat (the common case) then costs
 * no LRU update.  Only "exists" (another CPU reported it first, NOEXIST)
 * counts as seen: any other failure to remember the key (no memory) lets
 * the record through, a repeat later rather than a record lost now.
 */
static __always_inline bool seen_before(void *map, const void *key)
{
	__u8 one = 1;	/* every de-duplication map's value */

	if (bpf_map_lookup_elem(map, key))
		return true;
	return bpf_map_update_elem(map, key, &one, BPF_NOEXIST) == -VIGIL_EEXIST;
}

/*
 * Keep a record type in the object's BTF even when the code only reaches
 * it through casts: user space derives its layout from there.
 */
#define VIGIL_RECORD(name) \
	struct name *__vigil_record_##name __attribute__((unused))

/* Enums used only as constants leave no BTF either; user space needs their names. */
enum vigil_event_kind *__vigil_enum_kind __attribute__((unused));
enum vigil_flag *__vigil_enum_flag __attribute__((unused));
enum vigil_stat *__vigil_enum_stat __attribute__((unused));

#endif /* __VIGIL_COMMON_BPF_H */
