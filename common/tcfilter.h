/* A tc program at an interface's clsact ingress, at a fixed handle and
 * priority, so that the filter a SIGKILLed daemon left behind (tc filters
 * outlive their process) is replaced by its successor's, never stacked
 * under it: rs-logger's capture and rs-auxlog's tap (the same program,
 * logger/bpf/capture.bpf.c). */
#ifndef RS_TCFILTER_H
#define RS_TCFILTER_H

#include <stdbool.h>
#include <stdint.h>

#include <bpf/libbpf.h>

struct rs_tcfilter {
    struct bpf_tc_hook hook;
    int handle, prio;
    uint32_t prog_id;               /* ours, once attached */
    uint32_t replaced;              /* the program of the filter ours replaced, or 0 */
};

/* Attaches program 'prog' at 'ifindex''s ingress (handle, prio), creating
 * the clsact qdisc if need be, and replacing a filter there whose program
 * has the same name (a predecessor's).  Returns 0, -EBUSY when another
 * program holds the place, or libbpf's -errno. */
int rs_tcfilter_attach(struct rs_tcfilter *f, int ifindex, int handle, int prio, const struct bpf_program *prog);

/* Detaches our filter unless another one has replaced it since.  The
 * clsact qdisc stays: removing it would take with it any filter someone
 * else attached since; an empty one costs nothing.  Returns false when the
 * detach failed. */
bool rs_tcfilter_detach(struct rs_tcfilter *f);

#endif /* RS_TCFILTER_H */
