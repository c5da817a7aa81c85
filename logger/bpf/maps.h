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

#endif /* LG_BPF_MAPS_H */
