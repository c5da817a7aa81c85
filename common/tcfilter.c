/* See tcfilter.h. */
#include "tcfilter.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>

/* Whether the program of id 'id' is named 'name' (the kernel keeps 15
 * characters of it). */
static bool prog_named(uint32_t id, const char *name)
{
    struct bpf_prog_info info = { 0 };
    uint32_t len = sizeof(info);
    int fd = bpf_prog_get_fd_by_id(id);
    bool same;

    if (fd < 0)
        return false;
    same = !bpf_obj_get_info_by_fd(fd, &info, &len) && !strncmp(info.name, name, sizeof(info.name) - 1);
    close(fd);
    return same;
}

int rs_tcfilter_attach(struct rs_tcfilter *f, int ifindex, int handle, int prio, const struct bpf_program *prog)
{
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
    LIBBPF_OPTS(bpf_tc_opts, old, .handle = handle, .priority = prio);
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = prio, .flags = BPF_TC_F_REPLACE,
                .prog_fd = bpf_program__fd(prog));
    int e;

    f->hook = hook;
    f->handle = handle;
    f->prio = prio;
    f->prog_id = f->replaced = 0;
    e = bpf_tc_hook_create(&f->hook);
    if (e && e != -EEXIST)
        return e;
    if (bpf_tc_query(&f->hook, &old))
        old.prog_id = 0;
    if (old.prog_id && !prog_named(old.prog_id, bpf_program__name(prog)))
        return -EBUSY;
    if ((e = bpf_tc_attach(&f->hook, &opts)))
        return e;
    f->prog_id = opts.prog_id;
    f->replaced = old.prog_id;
    return 0;
}

bool rs_tcfilter_detach(struct rs_tcfilter *f)
{
    LIBBPF_OPTS(bpf_tc_opts, now, .handle = f->handle, .priority = f->prio);
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = f->handle, .priority = f->prio);

    if (!f->prog_id)
        return true;
    /* Another daemon started on the interface since replaced ours: its filter stays. */
    if (!bpf_tc_query(&f->hook, &now) && now.prog_id == f->prog_id && bpf_tc_detach(&f->hook, &opts))
        return false;
    f->prog_id = 0;
    return true;
}
