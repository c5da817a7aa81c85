/* The data paths rs-proxy knows (datapath.h), by name, and what they share. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "datapath.h"

static const struct px_datapath_ops *const datapaths[] = { &px_dp_ebpf, &px_dp_kmod };

const struct px_datapath_ops *px_datapath_find(const char *name)
{
    for (size_t i = 0; i < sizeof(datapaths) / sizeof(datapaths[0]); i++)
        if (!strcmp(datapaths[i]->name, name))
            return datapaths[i];
    return NULL;
}

const char *px_datapath_names(void)
{
    static char names[64];

    if (!names[0])
        for (size_t i = 0; i < sizeof(datapaths) / sizeof(datapaths[0]); i++)
            snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", i ? ", " : "",
                     datapaths[i]->name);
    return names;
}

uint32_t *px_flow_field(struct rs_flow *f, enum px_dp_field field)
{
    switch (field) {
    case PX_DP_STATE:
        return &f->state;
    case PX_DP_ACKS_TO_STACK:
        return &f->acks_to_stack;
    case PX_DP_AT_SYN:
        return &f->at_syn;
    default:
        return &f->clamp_ack;
    }
}

void px_flow_activate(struct rs_flow *f, const struct rs_splice_dir *d, uint64_t id, uint32_t state, bool guard,
                      const struct rs_flow_key *peer, uint32_t ifindex)
{
    f->dir = *d;
    f->state = state;
    f->guard = guard;
    f->clamp_ack = 0;
    f->acks_to_stack = 0;
    f->ack_watch = f->ack_watch_gen = 0;
    f->at_syn = 0;      /* the daemon's now, whoever made it */
    f->gen++;
    f->splice_id = id;
    f->ifindex = ifindex;
    if (peer)
        f->peer = *peer;
}

uint32_t px_flow_watch_ack(struct rs_flow *f, uint32_t ack, uint32_t *gen_counter)
{
    f->ack_watch = ack;
    f->ack_watch_gen = ++*gen_counter ? *gen_counter : ++*gen_counter;
    return f->ack_watch_gen;
}
