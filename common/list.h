/* Doubly linked lists threaded through their elements: any struct with
 * 'prev' and 'next' pointers to its own type, listed from a head pointer
 * (Open vSwitch's ovs_list, with the element's own pointers).  What the
 * daemons' tables of connections, calls and plans are made of. */
#ifndef RS_LIST_H
#define RS_LIST_H

#include <stddef.h>

/* Puts 'e' at the front of the list 'head'. */
#define RS_LIST_PUSH(head, e)                                                                                     \
    do {                                                                                                          \
        (e)->prev = NULL;                                                                                         \
        (e)->next = (head);                                                                                       \
        if (head)                                                                                                 \
            (head)->prev = (e);                                                                                   \
        (head) = (e);                                                                                             \
    } while (0)

/* Takes 'e' out of the list 'head'; its pointers are NULL afterwards. */
#define RS_LIST_UNLINK(head, e)                                                                                   \
    do {                                                                                                          \
        if ((e)->prev)                                                                                            \
            (e)->prev->next = (e)->next;                                                                          \
        else                                                                                                      \
            (head) = (e)->next;                                                                                   \
        if ((e)->next)                                                                                            \
            (e)->next->prev = (e)->prev;                                                                          \
        (e)->prev = (e)->next = NULL;                                                                             \
    } while (0)

#endif /* RS_LIST_H */
