// SPDX-License-Identifier: GPL-2.0
/* logmod: the seed's logging module (§5) for Debian 12's kernel.  A
 * netfilter hook on the logger's mirror port (the netdev family's ingress,
 * and egress when asked) copies every TCP segment to or from the VIP's
 * service port into a ring that the reader maps (kmod/logmod.h says how).
 * Only the kernel writes records and 'head'; only the reader writes
 * 'tail'; a segment that finds no room is dropped and counted, never
 * waited for (the hook runs in softirq context). */
#include <linux/etherdevice.h>
#include <linux/fs.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/netdevice.h>
#include <linux/netfilter.h>
#include <linux/nsproxy.h>
#include <linux/poll.h>
#include <linux/skbuff.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/tcp.h>
#include <linux/timekeeping.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <linux/wait.h>

#include "logmod.h"

#define LM_HOOKS 2              /* ingress, egress */

/* One capture: an open file of the device. */
struct lm_cap {
	struct list_head node;          /* on lm_caps */
	struct mutex lock;              /* START against release */
	void *mem;                      /* header page + ring, vmalloc_user */
	struct rs_logmod_ring *hdr;
	u8 *data;
	u32 size;
	spinlock_t wlock;               /* the producer side (hooks on every CPU) */
	wait_queue_head_t wait;
	struct net_device *dev;         /* hooked (a reference held), or NULL */
	struct net *net;
	struct nf_hook_ops ops[LM_HOOKS];
	int nops;
	__be32 vip;
	__be16 port;
};

static LIST_HEAD(lm_caps);
static DEFINE_MUTEX(lm_caps_lock);

static bool lm_wanted(struct sk_buff *skb, __be32 vip, __be16 port, unsigned int *iplen)
{
	struct iphdr _iph, *iph;
	struct tcphdr _th, *th;

	if (skb->protocol != htons(ETH_P_IP))
		return false;
	iph = skb_header_pointer(skb, skb_network_offset(skb), sizeof(_iph), &_iph);
	if (!iph || iph->version != 4 || iph->ihl < 5 || iph->protocol != IPPROTO_TCP)
		return false;
	th = skb_header_pointer(skb, skb_network_offset(skb) + iph->ihl * 4, sizeof(_th), &_th);
	if (!th)
		return false;
	if (!((iph->daddr == vip && th->dest == port) || (iph->saddr == vip && th->source == port)))
		return false;
	*iplen = min_t(unsigned int, ntohs(iph->tot_len), skb->len - skb_network_offset(skb));
	/* GSO: the whole super-segment is there, its tot_len is not. */
	if (skb_is_gso(skb))
		*iplen = skb->len - skb_network_offset(skb);
	return true;
}

/* Copies the frame of 'skb' into the ring, or counts a drop. */
static void lm_copy(struct lm_cap *c, struct sk_buff *skb, unsigned int iplen)
{
	struct rs_logmod_ring *h = c->hdr;
	u32 need = ALIGN(sizeof(struct rs_logmod_rec) + iplen, 8);
	struct rs_logmod_rec *rec;
	unsigned long flags;
	u64 head, tail;
	u32 off, room;
	bool was_empty;

	spin_lock_irqsave(&c->wlock, flags);
	head = h->head;
	tail = smp_load_acquire(&h->tail);
	was_empty = head == tail;
	off = (u32)(head & (c->size - 1));
	room = c->size - off;
	/* A record never wraps: pad to the ring's end first when it would. */
	if (need > c->size || head - tail + need + (room < need ? room : 0) > c->size) {
		h->drops++;
		spin_unlock_irqrestore(&c->wlock, flags);
		return;
	}
	if (room < need) {
		rec = (struct rs_logmod_rec *)(c->data + off);
		*rec = (struct rs_logmod_rec){ .len = room, .flags = RS_LOGMOD_PAD };
		head += room;
		off = 0;
	}
	rec = (struct rs_logmod_rec *)(c->data + off);
	*rec = (struct rs_logmod_rec){ .len = need, .caplen = iplen, .ts_ns = ktime_get_real_ns() };
	if (skb_copy_bits(skb, skb_network_offset(skb), rec + 1, iplen) < 0) {
		/* Not copyable after all: the record becomes padding. */
		rec->caplen = 0;
		rec->flags = RS_LOGMOD_PAD;
	} else {
		h->records++;
		h->bytes += iplen;
	}
	smp_store_release(&h->head, head + need);
	spin_unlock_irqrestore(&c->wlock, flags);
	/* A reader that has not caught up yet drains this one too before it
	 * polls again (poll looks at the ring after it registers): wake it
	 * only when it may be asleep. */
	if (was_empty)
		wake_up_interruptible(&c->wait);
}

static unsigned int lm_hook(void *priv, struct sk_buff *skb, const struct nf_hook_state *state)
{
	struct lm_cap *c = priv;
	unsigned int iplen;

	if (lm_wanted(skb, c->vip, c->port, &iplen))
		lm_copy(c, skb, iplen);
	return NF_ACCEPT;
}

/* Unhooks 'c' (its device going away, or its file closing).  Caller holds c->lock. */
static void lm_unhook(struct lm_cap *c)
{
	if (!c->dev)
		return;
	nf_unregister_net_hooks(c->net, c->ops, c->nops);      /* waits for running hooks */
	dev_put(c->dev);
	c->dev = NULL;
	c->nops = 0;
	wake_up_interruptible(&c->wait);
}

static long lm_start(struct lm_cap *c, const struct rs_logmod_cfg __user *ucfg)
{
	struct rs_logmod_cfg cfg;
	struct net_device *dev;
	int e;

	if (copy_from_user(&cfg, ucfg, sizeof(cfg)))
		return -EFAULT;
	cfg.ifname[sizeof(cfg.ifname) - 1] = '\0';
	if (cfg.ring_bytes < RS_LOGMOD_RING_MIN || cfg.ring_bytes > RS_LOGMOD_RING_MAX ||
	    !is_power_of_2(cfg.ring_bytes) || !cfg.vip || !cfg.port || (cfg.flags & ~RS_LOGMOD_EGRESS))
		return -EINVAL;
	if (c->mem)
		return -EBUSY;          /* one capture per open file */
	dev = dev_get_by_name(current->nsproxy->net_ns, cfg.ifname);
	if (!dev)
		return -ENODEV;
	c->mem = vmalloc_user(RS_LOGMOD_HDR + cfg.ring_bytes);
	if (!c->mem) {
		dev_put(dev);
		return -ENOMEM;
	}
	c->hdr = c->mem;
	c->data = (u8 *)c->mem + RS_LOGMOD_HDR;
	c->size = cfg.ring_bytes;
	c->hdr->size = cfg.ring_bytes;
	c->vip = cfg.vip;
	c->port = cfg.port;
	c->net = dev_net(dev);
	c->nops = cfg.flags & RS_LOGMOD_EGRESS ? 2 : 1;
	c->ops[0] = (struct nf_hook_ops){ .hook = lm_hook, .pf = NFPROTO_NETDEV, .hooknum = NF_NETDEV_INGRESS,
					  .priority = 0, .dev = dev, .priv = c };
	c->ops[1] = c->ops[0];
	c->ops[1].hooknum = NF_NETDEV_EGRESS;
	e = nf_register_net_hooks(c->net, c->ops, c->nops);
	if (e) {
		dev_put(dev);
		vfree(c->mem);
		c->mem = NULL;
		c->nops = 0;
		return e;
	}
	c->dev = dev;
	return 0;
}

static long lm_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	struct lm_cap *c = f->private_data;
	long e;

	if (cmd != RS_LOGMOD_START)
		return -ENOTTY;
	mutex_lock(&c->lock);
	e = lm_start(c, (const struct rs_logmod_cfg __user *)arg);
	mutex_unlock(&c->lock);
	return e;
}

static int lm_mmap(struct file *f, struct vm_area_struct *vma)
{
	struct lm_cap *c = f->private_data;
	int e = -EINVAL;

	mutex_lock(&c->lock);
	if (c->mem && vma->vm_pgoff == 0 && vma->vm_end - vma->vm_start == RS_LOGMOD_HDR + c->size)
		e = remap_vmalloc_range(vma, c->mem, 0);
	mutex_unlock(&c->lock);
	return e;
}

static __poll_t lm_poll(struct file *f, poll_table *pt)
{
	struct lm_cap *c = f->private_data;

	poll_wait(f, &c->wait, pt);
	if (!c->mem)
		return 0;
	if (smp_load_acquire(&c->hdr->head) != READ_ONCE(c->hdr->tail))
		return EPOLLIN | EPOLLRDNORM;
	return c->dev ? 0 : EPOLLHUP;   /* its interface went away */
}

static int lm_open(struct inode *inode, struct file *f)
{
	struct lm_cap *c = kzalloc(sizeof(*c), GFP_KERNEL);

	if (!c)
		return -ENOMEM;
	mutex_init(&c->lock);
	spin_lock_init(&c->wlock);
	init_waitqueue_head(&c->wait);
	f->private_data = c;
	mutex_lock(&lm_caps_lock);
	list_add(&c->node, &lm_caps);
	mutex_unlock(&lm_caps_lock);
	return 0;
}

/* The last reference to the file is gone (a mapping holds one): the
 * reader closed it, or died. */
static int lm_release(struct inode *inode, struct file *f)
{
	struct lm_cap *c = f->private_data;

	mutex_lock(&lm_caps_lock);
	list_del(&c->node);
	mutex_unlock(&lm_caps_lock);
	mutex_lock(&c->lock);
	lm_unhook(c);
	mutex_unlock(&c->lock);
	vfree(c->mem);
	kfree(c);
	return 0;
}

static const struct file_operations lm_fops = {
	.owner = THIS_MODULE,
	.open = lm_open,
	.release = lm_release,
	.unlocked_ioctl = lm_ioctl,
	.mmap = lm_mmap,
	.poll = lm_poll,
	.llseek = noop_llseek,
};

static struct miscdevice lm_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "rs_logmod",
	.fops = &lm_fops,
	.mode = 0600,
};

/* A hooked interface that goes away takes its hooks with it. */
static int lm_netdev_event(struct notifier_block *nb, unsigned long event, void *ptr)
{
	struct net_device *dev = netdev_notifier_info_to_dev(ptr);
	struct lm_cap *c;

	if (event != NETDEV_UNREGISTER)
		return NOTIFY_DONE;
	mutex_lock(&lm_caps_lock);
	list_for_each_entry(c, &lm_caps, node) {
		mutex_lock(&c->lock);
		if (c->dev == dev) {
			pr_info("rs_logmod: %s went away: capture ended\n", dev->name);
			lm_unhook(c);
		}
		mutex_unlock(&c->lock);
	}
	mutex_unlock(&lm_caps_lock);
	return NOTIFY_DONE;
}

static struct notifier_block lm_nb = { .notifier_call = lm_netdev_event };

static int __init lm_init(void)
{
	int e = register_netdevice_notifier(&lm_nb);

	if (e)
		return e;
	e = misc_register(&lm_misc);
	if (e)
		unregister_netdevice_notifier(&lm_nb);
	return e;
}

static void __exit lm_exit(void)
{
	misc_deregister(&lm_misc);
	unregister_netdevice_notifier(&lm_nb);
}

module_init(lm_init);
module_exit(lm_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("resplice logmod: TCP segments of the VIP's connections into a mapped ring");
