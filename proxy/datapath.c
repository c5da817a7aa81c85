/* The data paths rs-proxy knows (datapath.h), by name. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "datapath.h"

static const struct px_datapath_ops *const datapaths[] = { &px_dp_ebpf };

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
