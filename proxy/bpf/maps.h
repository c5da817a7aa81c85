/* The tc program's maps (the structs are ../splice_map.h, shared with the
 * daemon).  rs_flows is the daemon's (configuration: read here, never
 * written), rs_track the program's (positions, counters: written here
 * only); the daemon creates and deletes both halves of an entry. */
#ifndef RS_BPF_MAPS_H
#define RS_BPF_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "splice_map.h"

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, RS_SPLICE_MAP_MAX);
    __type(key, struct rs_flow_key);
    __type(value, struct rs_flow);
} rs_flows SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, RS_SPLICE_MAP_MAX);
    __type(key, struct rs_flow_key);
    __type(value, struct rs_flow_track);
} rs_track SEC(".maps");

/* Where clients connect (one entry). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct rs_vip);
} rs_vips SEC(".maps");

/* Newest TSval of each client connection to the VIP that is not spliced yet. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, RS_TS_MAP_MAX);
    __type(key, struct rs_flow_key);
    __type(value, __u32);
} rs_ts SEC(".maps");

/* Splicing at the SYN (struct rs_syn_cfg): the configuration, the proxy's
 * free ports (host order), and room to build a new splice's entries in
 * (too big for the stack; its track half is never written, so it stays
 * zero). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct rs_syn_cfg);
} rs_syn SEC(".maps");

/* The next splice id the tc program gives (RS_SYN_ID_BASE up): written
 * here only, but for rs-proxy's first value. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} rs_syn_ids SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_QUEUE);
    __uint(max_entries, 65536);
    __type(value, __u16);
} rs_syn_ports SEC(".maps");

struct rs_syn_scratch {
    __u8 fc[sizeof(struct rs_flow)];     /* bytes: a per-CPU map holds no bpf_spin_lock */
    __u8 fb[sizeof(struct rs_flow)];
    __u8 zero_track[sizeof(struct rs_flow_track)];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct rs_syn_scratch);
} rs_syn_scratch SEC(".maps");

/* FIN/RST seen or held at a splice, ACK watches reached (struct rs_flow_event). */
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, RS_SPLICE_EVENTS_BYTES);
} rs_events SEC(".maps");

/* Events no one need be woken for (RS_FLOW_OPENED: a connection to take
 * on, whose SYN-ACK must not wait for a wake-up's interrupts): rs-proxy
 * reads this ring whenever its loop wakes, before anything else is
 * handled (its lease's renewal wakes it every 100 ms). */
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, RS_SPLICE_EVENTS_BYTES);
} rs_events_quiet SEC(".maps");

#endif /* RS_BPF_MAPS_H */
