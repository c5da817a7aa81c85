/* The capture program's maps: the ring rs-logger drains (records of
 * core/capture.h) and its per-CPU counters, which rs-logger sums into its
 * stats line (received, dropped). */
#ifndef LG_BPF_MAPS_H
#define LG_BPF_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "capture.h"

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, RS_CAPTURE_RING_BYTES);
} rs_cap_ring SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct rs_capture_counts);
} rs_cap_counts SEC(".maps");

/* rs-auxlog's tap only (rs_cap_tap): its verdict on each conversation it
 * judged (RS_CAPTURE_JUDGED, RS_CAPTURE_FENCED), keyed by the
 * backend-to-store segments' addresses and ports as they are on the wire
 * (struct rs_capture_fence_key).  No entry: not judged yet. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, RS_CAPTURE_VERDICT_MAX);
    __type(key, struct rs_capture_fence_key);
    __type(value, __u8);
} rs_cap_verdict SEC(".maps");

#endif /* LG_BPF_MAPS_H */
