// SPDX-License-Identifier: GPL-2.0
/* tcpspmod: the seed's splicing module (§5) for Debian 12's kernel, doing
 * what proxy/bpf/splice.bpf.c does as a tc program: a netfilter hook at the
 * proxy interface's ingress (the netdev family, where tc's clsact sits)
 * rewrites the segments of spliced connections onto the other connection
 * with core/splice.h (the same arithmetic as the tc program and the unit
 * tests) and sends them out through the routing table, so the proxy's own
 * TCP stack never sees them.  Everything else passes.
 *
 * rs-proxy (--datapath kmod, proxy/dp_kmod.c) configures it over generic
 * netlink; proxy/tcpsp.h is the protocol and its decoder.  One table per
 * interface, living on when the daemon dies (a successor adopts it), gone
 * with DETACH, with the interface, its network namespace, or the module.
 * A per-table spinlock covers the table, taken for a few header rewrites
 * per segment; the transmit runs outside it. */
#include <linux/hashtable.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/jhash.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/netdevice.h>
#include <linux/netfilter.h>
#include <linux/skbuff.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/tcp.h>
#include <linux/timekeeping.h>
#include <linux/vmalloc.h>
#include <net/checksum.h>
#include <net/genetlink.h>
#include <net/ip.h>
#include <net/net_namespace.h>
#include <net/netns/generic.h>
#include <net/route.h>

#include "splice.h"
#include "tcpsp.h"

#define TSP_FLOW_BITS 12
#define TSP_TS_BITS 10
#define TSP_EVENTS_MAX 2        /* a segment raises at most two (ACKED, then FIN/RST) */

struct tsp_entry {
	struct hlist_node node;
	struct rs_flow_key key;
	struct rs_flow cfg;             /* the daemon's half */
	struct rs_flow_track t;         /* ours */
};

/* A client's newest TSval before its splice (the tc program's rs_ts). */
struct tsp_ts {
	struct hlist_node node;
	struct list_head age;           /* oldest first: evicted when full */
	struct rs_flow_key key;
	u32 ts;
};

struct tsp_table {
	struct list_head node;          /* on tsp_tables */
	struct net *net;
	struct net_device *dev;         /* hooked, a reference held */
	struct nf_hook_ops ops;
	spinlock_t lock;                /* everything below */
	DECLARE_HASHTABLE(flows, TSP_FLOW_BITS);
	u32 nflows;
	DECLARE_HASHTABLE(ts, TSP_TS_BITS);
	struct list_head ts_age;
	u32 nts;
	struct rs_vip vip;
};

/* Tables are created and destroyed under this mutex (netlink requests,
 * the netdev notifier, namespace exit); segments never take it. */
static LIST_HEAD(tsp_tables);
static DEFINE_MUTEX(tsp_lock);
static struct genl_family tsp_family;

static u32 tsp_hash(const struct rs_flow_key *k)
{
	return jhash(k, sizeof(*k), 0);
}

static struct tsp_entry *tsp_find(struct tsp_table *tb, const struct rs_flow_key *k)
{
	struct tsp_entry *e;

	hash_for_each_possible(tb->flows, e, node, tsp_hash(k))
		if (!memcmp(&e->key, k, sizeof(*k)))
			return e;
	return NULL;
}

static struct tsp_ts *tsp_ts_find(struct tsp_table *tb, const struct rs_flow_key *k)
{
	struct tsp_ts *x;

	hash_for_each_possible(tb->ts, x, node, tsp_hash(k))
		if (!memcmp(&x->key, k, sizeof(*k)))
			return x;
	return NULL;
}

static void tsp_ts_del(struct tsp_table *tb, struct tsp_ts *x)
{
	hash_del(&x->node);
	list_del(&x->age);
	tb->nts--;
	kfree(x);
}

/* Records TSval 'ts' of client connection 'k' (caller holds tb->lock). */
static void tsp_ts_put(struct tsp_table *tb, const struct rs_flow_key *k, u32 ts)
{
	struct tsp_ts *x = tsp_ts_find(tb, k);

	if (x) {
		x->ts = ts;
		list_move_tail(&x->age, &tb->ts_age);
		return;
	}
	if (tb->nts >= RS_TS_MAP_MAX)
		tsp_ts_del(tb, list_first_entry(&tb->ts_age, struct tsp_ts, age));
	x = kmalloc(sizeof(*x), GFP_ATOMIC);
	if (!x)
		return;
	x->key = *k;
	x->ts = ts;
	hash_add(tb->ts, &x->node, tsp_hash(k));
	list_add_tail(&x->age, &tb->ts_age);
	tb->nts++;
}

static void tsp_flush(struct tsp_table *tb)
{
	struct tsp_entry *e;
	struct tsp_ts *x;
	struct hlist_node *tmp;
	int b;

	spin_lock_bh(&tb->lock);
	hash_for_each_safe(tb->flows, b, tmp, e, node) {
		hash_del(&e->node);
		kfree(e);
	}
	tb->nflows = 0;
	hash_for_each_safe(tb->ts, b, tmp, x, node)
		tsp_ts_del(tb, x);
	memset(&tb->vip, 0, sizeof(tb->vip));
	spin_unlock_bh(&tb->lock);
}

/* ---- the segment path (proxy/bpf/splice.bpf.c, step for step) ------------ */

struct tsp_seg {
	u8 ip[20];
	u8 tcp[RS_TCP_HDR_MAX];
	u32 hlen, payload, ipoff;
	struct rs_flow_key key;
	struct rs_flow_event ev[TSP_EVENTS_MAX];
	int nev;
};

static void tsp_report(struct tsp_seg *s, const struct rs_flow *f, u32 flags, u32 seq, u32 gen)
{
	struct rs_flow_event *e;

	if (s->nev >= TSP_EVENTS_MAX)
		return;
	e = &s->ev[s->nev++];
	*e = (struct rs_flow_event){ .key = s->key, .splice_id = f->splice_id, .ns = ktime_get_ns(),
				     .flags = flags, .seq = seq, .gen = gen };
}

/* The events of a segment, to the group, outside the table's lock. */
static void tsp_send_events(struct tsp_table *tb, const struct tsp_seg *s)
{
	int i;

	for (i = 0; i < s->nev; i++) {
		struct sk_buff *msg = genlmsg_new(nla_total_size(sizeof(s->ev[i])) + nla_total_size(4), GFP_ATOMIC);
		void *hdr;

		if (!msg)
			return;
		hdr = genlmsg_put(msg, 0, 0, &tsp_family, 0, RS_TCPSP_C_EVENT);
		if (!hdr || nla_put_u32(msg, RS_TCPSP_A_IFINDEX, tb->dev->ifindex) ||
		    nla_put(msg, RS_TCPSP_A_EVENT, sizeof(s->ev[i]), &s->ev[i])) {
			nlmsg_free(msg);
			return;
		}
		genlmsg_end(msg, hdr);
		genlmsg_multicast_netns(&tsp_family, tb->net, msg, 0, 0, GFP_ATOMIC);
	}
}

static bool tsp_ended(struct tsp_table *tb, const struct tsp_entry *e)
{
	const struct tsp_entry *p;

	if (e->t.seen & RS_FLOW_SEEN_RST)
		return true;
	if (!(e->t.seen & RS_FLOW_SEEN_FIN))
		return false;
	p = tsp_find(tb, &e->cfg.peer);
	return p && p->t.pos.fin_seen;
}

static bool tsp_proxy_alive(const struct rs_vip *vip)
{
	u64 now = ktime_get_ns();

	return now <= vip->lease_ns || now > vip->lease_ns + RS_VIP_SUCCESSOR_NS;
}

/* The whole TCP header into s->tcp; false when it cannot be had. */
static bool tsp_load_tcp(struct sk_buff *skb, struct tsp_seg *s)
{
	return s->hlen >= RS_TCP_HDR_MIN && s->hlen <= RS_TCP_HDR_MAX &&
	       !skb_copy_bits(skb, s->ipoff + 20, s->tcp, s->hlen);
}

static void tsp_record_ts(struct tsp_table *tb, struct sk_buff *skb, struct tsp_seg *s)
{
	u32 ts;

	if (s->hlen > RS_TCP_HDR_MIN && tsp_load_tcp(skb, s) && !rs_splice_tsval_get(s->tcp, s->hlen, &ts))
		tsp_ts_put(tb, &s->key, ts);
}

static void tsp_keep_fin(struct sk_buff *skb, struct tsp_seg *s, struct rs_flow_track *t)
{
	u32 seq;

	t->fin_hdr_len = 0;
	if (!tsp_load_tcp(skb, s))
		return;
	memcpy(t->fin_hdr, s->tcp, s->hlen);
	seq = rs_splice_load32(t->fin_hdr + 4) + s->payload;
	rs_splice_store32(t->fin_hdr + 4, seq);
	t->fin_hdr[13] &= ~0x08;        /* PSH was the data's */
	t->fin_hdr_len = s->hlen;
}

enum tsp_verdict { TSP_PASS, TSP_DROP, TSP_SEND };

/* Decides what becomes of segment 's' of 'skb' and, for TSP_SEND, leaves
 * the translated TCP header in s->tcp and the new addresses in '*d'.
 * Caller holds tb->lock. */
static enum tsp_verdict tsp_decide(struct tsp_table *tb, struct sk_buff *skb, struct tsp_seg *s,
				   struct rs_splice_dir *d, u32 *oif)
{
	u8 *tcp = s->tcp, flags = s->tcp[13];
	struct tsp_entry *e = tsp_find(tb, &s->key), *p;
	struct rs_flow *f;
	struct rs_flow_track *t;
	int at_pos, at_end, hold_fin = 0, has_ack;
	u32 evflags, ack;

	if (!e) {
		if (tb->vip.addr == s->key.daddr && tb->vip.port == s->key.dport) {
			if ((flags & 0x12) == 0x02 && tb->vip.lease_ns && !tsp_proxy_alive(&tb->vip))
				return TSP_DROP;
			tsp_record_ts(tb, skb, s);
		}
		return TSP_PASS;
	}
	f = &e->cfg;
	t = &e->t;
	if (!t->reused && (flags & 0x12) == 0x02 && t->seen_gen == f->gen && tsp_ended(tb, e))
		t->reused = 1;
	if (t->reused) {
		tsp_record_ts(tb, skb, s);
		return TSP_PASS;
	}
	/* A RST once both sides closed in full ends nothing (see the tc program). */
	if ((flags & 0x04) && f->state == RS_FLOW_ACTIVE && (p = tsp_find(tb, &f->peer))
	    && rs_splice_closed_both(&t->pos, &f->dir, &p->t.pos, &p->cfg.dir))
		goto drop;
	t->last_ns = ktime_get_ns();
	if (flags & 0x10) {
		ack = rs_splice_load32(tcp + 8);
		if (!t->ack_ns || (s32)(ack - t->ack_hi) > 0) {
			t->ack_hi = ack;
			t->ack_ns = t->last_ns;
		}
	}
	if (t->seen_gen != f->gen) {
		t->seen = 0;
		t->seen_gen = f->gen;
	}
	if (s->ip[0] != 0x45 || s->hlen < RS_TCP_HDR_MIN || s->hlen > RS_TCP_HDR_MAX)
		goto bad;
	at_pos = rs_splice_pos_at(&t->pos, tcp);
	at_end = rs_splice_pos_is_end(&t->pos, tcp, s->payload, at_pos);
	if ((at_pos || !f->guard || !(flags & 0x05)) && f->state != RS_FLOW_FROZEN) {
		/* As the tc program: a guarded backend's segment a HOLD drops
		 * never reaches the client, and does not move its position. */
		ack = f->state == RS_FLOW_HOLD && f->guard ? rs_splice_pos_ack(&t->pos, tcp, &has_ack)
							   : rs_splice_pos_update(&t->pos, tcp, s->payload, &has_ack);
		if (has_ack && f->ack_watch_gen && t->acked_gen != f->ack_watch_gen && rs_seq_ge(ack, f->ack_watch)) {
			t->acked_gen = f->ack_watch_gen;
			tsp_report(s, f, RS_FLOW_ACKED, ack, f->ack_watch_gen);
		}
	}
	if (f->state == RS_FLOW_WATCH) {
		u32 ts;

		if (s->hlen > RS_TCP_HDR_MIN && tsp_load_tcp(skb, s) && !rs_splice_tsval_get(tcp, s->hlen, &ts))
			t->ts_recent = ts;
		return TSP_PASS;
	}
	if (f->acks_to_stack && f->state == RS_FLOW_ACTIVE && !s->payload && !(flags & 0x07))
		return TSP_PASS;
	if (f->state == RS_FLOW_ACKONLY && (s->payload || (flags & 0x05)))
		goto drop;
	if (f->state != RS_FLOW_ACTIVE && f->state != RS_FLOW_ACKONLY)
		goto drop;
	if (f->guard && (flags & 0x05)) {
		/* Every end from a guarded backend waits for the logger's word,
		 * even one after the client's own FIN (see the tc program). */
		if (!at_end) {
			t->ends_refused++;
			goto drop;
		}
		evflags = (flags & 0x01 ? RS_FLOW_SEEN_FIN : 0) | (flags & 0x04 ? RS_FLOW_SEEN_RST : 0);
		if ((t->seen & evflags) != evflags) {
			t->seen |= evflags;
			if (evflags == RS_FLOW_SEEN_FIN)
				tsp_keep_fin(skb, s, t);
			tsp_report(s, f, evflags | RS_FLOW_GUARDED, 0, f->gen);
		}
		if ((flags & 0x04) || !s->payload)
			goto drop;
		hold_fin = 1;
	}
	if (!tsp_load_tcp(skb, s) || rs_splice_tcp(&f->dir, tcp, s->hlen) < 0)
		goto bad;
	if (f->clamp_ack && (tcp[13] & 0x10)) {
		p = tsp_find(tb, &f->peer);
		if (p && p->t.pos.has_seq)
			rs_splice_clamp_ack(tcp, p->t.pos.seq_next, f->dir.win_scale_out);
	}
	if (hold_fin)
		tcp[13] &= ~0x01;
	t->pkts++;
	t->bytes += skb->len;
	evflags = (tcp[13] & 0x01 ? RS_FLOW_SEEN_FIN : 0) | (tcp[13] & 0x04 ? RS_FLOW_SEEN_RST : 0);
	if (evflags && !at_end) {
		t->ends_refused++;
	} else if (evflags && (t->seen & evflags) != evflags) {
		t->seen |= evflags;
		tsp_report(s, f, evflags, rs_splice_load32(tcp + 4), f->gen);
	}
	*d = f->dir;
	*oif = f->ifindex;
	return TSP_SEND;
bad:
	t->errors++;
	return TSP_DROP;
drop:
	t->dropped++;
	return TSP_DROP;
}

/* Writes the translated header 's' and addresses 'd' into 'skb' and sends
 * it by the routing table, as the tc program's bpf_redirect_neigh does.
 * Consumes 'skb'. */
static void tsp_send(struct tsp_table *tb, struct sk_buff *skb, struct tsp_seg *s,
		     const struct rs_splice_dir *d, u32 oif)
{
	__be32 osrc, odst, nsrc = htonl(d->saddr), ndst = htonl(d->daddr);
	u8 old[RS_TCP_HDR_MAX];
	struct iphdr *iph;
	struct tcphdr *th;
	struct flowi4 fl4 = { .daddr = ndst, .saddr = nsrc, .flowi4_oif = oif, .flowi4_proto = IPPROTO_TCP };
	struct rtable *rt;
	__wsum diff;

	if (skb_ensure_writable(skb, s->ipoff + 20 + s->hlen) || skb_copy_bits(skb, s->ipoff + 20, old, s->hlen))
		goto drop;
	iph = (struct iphdr *)(skb->data + s->ipoff);
	th = (struct tcphdr *)((u8 *)iph + 20);
	/* The TCP header: its checksum moves by the difference of the two
	 * headers with their checksum fields equal (the kernel's helper knows
	 * a CHECKSUM_PARTIAL skb, whose field holds the pseudo header only). */
	s->tcp[16] = old[16];
	s->tcp[17] = old[17];
	diff = csum_sub(csum_partial(s->tcp, s->hlen, 0), csum_partial(old, s->hlen, 0));
	memcpy(th, s->tcp, s->hlen);
	inet_proto_csum_replace_by_diff(&th->check, skb, diff, false, false);
	osrc = iph->saddr;
	odst = iph->daddr;
	inet_proto_csum_replace4(&th->check, skb, osrc, nsrc, true);
	inet_proto_csum_replace4(&th->check, skb, odst, ndst, true);
	csum_replace4(&iph->check, osrc, nsrc);
	csum_replace4(&iph->check, odst, ndst);
	iph->saddr = nsrc;
	iph->daddr = ndst;
	if (skb->ip_summed == CHECKSUM_COMPLETE)      /* as a forwarded skb: not on transmit */
		skb->ip_summed = CHECKSUM_NONE;

	rt = ip_route_output_key(tb->net, &fl4);
	if (IS_ERR(rt))
		goto drop;
	skb_dst_drop(skb);
	skb_dst_set(skb, &rt->dst);
	skb->dev = rt->dst.dev;
	skb->protocol = htons(ETH_P_IP);
	skb->pkt_type = PACKET_HOST;
	skb_clear_tstamp(skb);
	nf_reset_ct(skb);
	memset(IPCB(skb), 0, sizeof(*IPCB(skb)));    /* the driver's and GRO's cb are not IP's */
	if (s->ipoff)
		__skb_pull(skb, s->ipoff);
	skb_reset_network_header(skb);
	skb_set_transport_header(skb, 20);
	ip_local_out(tb->net, NULL, skb);
	return;
drop:
	kfree_skb(skb);
}

static unsigned int tsp_hook(void *priv, struct sk_buff *skb, const struct nf_hook_state *state)
{
	struct tsp_table *tb = priv;
	struct tsp_seg s;
	struct rs_splice_dir d;
	enum tsp_verdict v;
	u32 oif = 0, tot;

	if (skb->protocol != htons(ETH_P_IP))
		return NF_ACCEPT;
	s.ipoff = skb_network_offset(skb);
	if (skb_copy_bits(skb, s.ipoff, s.ip, sizeof(s.ip)) || s.ip[9] != IPPROTO_TCP ||
	    skb_copy_bits(skb, s.ipoff + 20, s.tcp, RS_TCP_HDR_MIN))
		return NF_ACCEPT;
	memcpy(&s.key.saddr, s.ip + 12, 4);
	memcpy(&s.key.daddr, s.ip + 16, 4);
	memcpy(&s.key.sport, s.tcp, 2);
	memcpy(&s.key.dport, s.tcp + 2, 2);
	s.hlen = (u32)(s.tcp[12] >> 4) * 4;
	/* The IP length, not the frame's: a short frame carries padding.
	 * A GSO skb's length is its own (its tot_len may be 0). */
	tot = rs_splice_load16(s.ip + 2);
	if (skb_is_gso(skb) || !tot)
		tot = skb->len - s.ipoff;
	s.payload = tot > 20 + s.hlen ? tot - 20 - s.hlen : 0;
	s.nev = 0;

	spin_lock_bh(&tb->lock);
	v = tsp_decide(tb, skb, &s, &d, &oif);
	spin_unlock_bh(&tb->lock);
	tsp_send_events(tb, &s);
	if (v == TSP_PASS)
		return NF_ACCEPT;
	if (v == TSP_DROP)
		return NF_DROP;
	if (!skb_is_gso(skb) && skb->len - s.ipoff > tot && pskb_trim_rcsum(skb, s.ipoff + tot))
		return NF_DROP;
	tsp_send(tb, skb, &s, &d, oif);
	return NF_STOLEN;
}

/* ---- tables -------------------------------------------------------------- */

static struct tsp_table *tsp_table_of(struct net *net, int ifindex)
{
	struct tsp_table *tb;

	list_for_each_entry(tb, &tsp_tables, node)
		if (net_eq(tb->net, net) && tb->dev->ifindex == ifindex)
			return tb;
	return NULL;
}

static void tsp_destroy(struct tsp_table *tb)
{
	nf_unregister_net_hook(tb->net, &tb->ops);     /* waits for running hooks */
	list_del(&tb->node);
	tsp_flush(tb);
	dev_put(tb->dev);
	kvfree(tb);
}

static int tsp_attach(struct net *net, u32 ifindex, bool adopt)
{
	struct tsp_table *tb = tsp_table_of(net, ifindex);
	struct net_device *dev;
	int e;

	if (tb) {
		if (!adopt)
			tsp_flush(tb);
		return 0;
	}
	dev = dev_get_by_index(net, ifindex);
	if (!dev)
		return -ENODEV;
	tb = kvzalloc(sizeof(*tb), GFP_KERNEL);
	if (!tb) {
		dev_put(dev);
		return -ENOMEM;
	}
	tb->net = net;
	tb->dev = dev;
	spin_lock_init(&tb->lock);
	hash_init(tb->flows);
	hash_init(tb->ts);
	INIT_LIST_HEAD(&tb->ts_age);
	tb->ops = (struct nf_hook_ops){ .hook = tsp_hook, .pf = NFPROTO_NETDEV, .hooknum = NF_NETDEV_INGRESS,
					.priority = 0, .dev = dev, .priv = tb };
	e = nf_register_net_hook(net, &tb->ops);
	if (e) {
		dev_put(dev);
		kvfree(tb);
		return e;
	}
	list_add(&tb->node, &tsp_tables);
	return 0;
}

/* ---- netlink ------------------------------------------------------------- */

static int tsp_reply(struct genl_info *info, int (*fill)(struct sk_buff *, const void *), const void *arg,
		     size_t size)
{
	struct sk_buff *msg = genlmsg_new(size, GFP_KERNEL);
	void *hdr;

	if (!msg)
		return -ENOMEM;
	hdr = genlmsg_put_reply(msg, info, &tsp_family, 0, info->genlhdr->cmd);
	if (!hdr || fill(msg, arg)) {
		nlmsg_free(msg);
		return -EMSGSIZE;
	}
	genlmsg_end(msg, hdr);
	return genlmsg_reply(msg, info);
}

static int tsp_fill_ts(struct sk_buff *msg, const void *arg)
{
	return nla_put_u32(msg, RS_TCPSP_A_TS, *(const u32 *)arg);
}

static int tsp_fill_key(struct sk_buff *msg, const void *arg)
{
	return nla_put(msg, RS_TCPSP_A_KEY, sizeof(struct rs_flow_key), arg);
}

static int tsp_fill_entry(struct sk_buff *msg, const void *arg)
{
	const struct tsp_entry *e = arg;

	return nla_put(msg, RS_TCPSP_A_KEY, sizeof(e->key), &e->key) ||
	       nla_put(msg, RS_TCPSP_A_FLOW, sizeof(e->cfg), &e->cfg) ||
	       nla_put(msg, RS_TCPSP_A_TRACK, sizeof(e->t), &e->t);
}

/* SET (the caller holds tb->lock). */
static int tsp_set(struct tsp_table *tb, const struct rs_tcpsp_msg *m)
{
	struct tsp_entry *e = tsp_find(tb, &m->key);
	bool track = m->have & RS_TCPSP_BIT(RS_TCPSP_A_TRACK);

	if (e && (m->flags & RS_TCPSP_F_NOEXIST))
		return -EEXIST;
	if (!e && (m->flags & RS_TCPSP_F_EXIST))
		return -ENOENT;
	if (!e) {
		if (tb->nflows >= RS_SPLICE_MAP_MAX)
			return -E2BIG;
		e = kzalloc(sizeof(*e), GFP_ATOMIC);
		if (!e)
			return -ENOMEM;
		e->key = m->key;
		if (track)
			e->t = m->track;
		hash_add(tb->flows, &e->node, tsp_hash(&m->key));
		tb->nflows++;
	} else if (m->flags & RS_TCPSP_F_RESET) {
		if (track)
			e->t = m->track;
		else
			memset(&e->t, 0, sizeof(e->t));
	}
	e->cfg = m->flow;
	return 0;
}

/* The entry after 'k' in the table's order (the first when 'k' is NULL or gone). */
static struct tsp_entry *tsp_next(struct tsp_table *tb, const struct rs_flow_key *k)
{
	struct tsp_entry *e, *cur = k ? tsp_find(tb, k) : NULL;
	bool after = !cur;
	int b;

	hash_for_each(tb->flows, b, e, node) {
		if (after)
			return e;
		after = e == cur;
	}
	return NULL;
}

static int tsp_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct net *net = genl_info_net(info);
	struct rs_tcpsp_msg *m = kmalloc(sizeof(*m), GFP_KERNEL);
	struct tsp_table *tb;
	struct tsp_entry *e, copy;
	struct tsp_ts *x;
	u32 ts;
	int err;

	if (!m)
		return -ENOMEM;
	err = rs_tcpsp_parse(info->genlhdr->cmd, genlmsg_data(info->genlhdr), genlmsg_len(info->genlhdr), m);
	if (err) {
		GENL_SET_ERR_MSG(info, "rs_tcpsp: malformed request");
		goto out;
	}
	mutex_lock(&tsp_lock);
	if (info->genlhdr->cmd == RS_TCPSP_C_ATTACH) {
		err = tsp_attach(net, m->ifindex, m->flags & RS_TCPSP_F_ADOPT);
		goto unlock;
	}
	tb = tsp_table_of(net, m->ifindex);
	err = -ENODEV;
	if (!tb)
		goto unlock;
	err = 0;
	switch (info->genlhdr->cmd) {
	case RS_TCPSP_C_DETACH:
		tsp_destroy(tb);
		break;
	case RS_TCPSP_C_VIP:
		spin_lock_bh(&tb->lock);
		tb->vip = m->vip;
		spin_unlock_bh(&tb->lock);
		break;
	case RS_TCPSP_C_TS_TAKE:
		spin_lock_bh(&tb->lock);
		x = tsp_ts_find(tb, &m->key);
		if (x) {
			ts = x->ts;
			tsp_ts_del(tb, x);
		}
		spin_unlock_bh(&tb->lock);
		err = x ? tsp_reply(info, tsp_fill_ts, &ts, nla_total_size(4)) : -ENOENT;
		break;
	case RS_TCPSP_C_GET:
	case RS_TCPSP_C_NEXT:
		spin_lock_bh(&tb->lock);
		e = info->genlhdr->cmd == RS_TCPSP_C_GET ? tsp_find(tb, &m->key)
			: tsp_next(tb, m->have & RS_TCPSP_BIT(RS_TCPSP_A_KEY) ? &m->key : NULL);
		if (e)
			copy = *e;
		spin_unlock_bh(&tb->lock);
		if (!e)
			err = -ENOENT;
		else if (info->genlhdr->cmd == RS_TCPSP_C_GET)
			err = tsp_reply(info, tsp_fill_entry, &copy, nla_total_size(sizeof(copy.key)) +
					nla_total_size(sizeof(copy.cfg)) + nla_total_size(sizeof(copy.t)));
		else
			err = tsp_reply(info, tsp_fill_key, &copy.key, nla_total_size(sizeof(copy.key)));
		break;
	case RS_TCPSP_C_SET:
		spin_lock_bh(&tb->lock);
		err = tsp_set(tb, m);
		spin_unlock_bh(&tb->lock);
		break;
	case RS_TCPSP_C_DEL:
		spin_lock_bh(&tb->lock);
		e = tsp_find(tb, &m->key);
		if (e) {
			hash_del(&e->node);
			tb->nflows--;
		}
		spin_unlock_bh(&tb->lock);
		kfree(e);
		err = e ? 0 : -ENOENT;
		break;
	default:
		err = -EOPNOTSUPP;      /* EVENT: the module's own */
	}
unlock:
	mutex_unlock(&tsp_lock);
out:
	kfree(m);
	return err;
}

#define TSP_OP(c) { .cmd = (c), .doit = tsp_doit, .flags = GENL_ADMIN_PERM, \
		    .validate = GENL_DONT_VALIDATE_STRICT | GENL_DONT_VALIDATE_DUMP }

static const struct genl_small_ops tsp_ops[] = {
	TSP_OP(RS_TCPSP_C_ATTACH), TSP_OP(RS_TCPSP_C_DETACH), TSP_OP(RS_TCPSP_C_VIP), TSP_OP(RS_TCPSP_C_TS_TAKE),
	TSP_OP(RS_TCPSP_C_GET), TSP_OP(RS_TCPSP_C_SET), TSP_OP(RS_TCPSP_C_DEL), TSP_OP(RS_TCPSP_C_NEXT),
};

static const struct genl_multicast_group tsp_mcgrps[] = {
	{ .name = RS_TCPSP_MCGRP },
};

/* No policy: the core leaves the attributes alone (resv_start_op after
 * every command) and rs_tcpsp_parse, shared with user space and fuzzed
 * there, decodes them. */
static struct genl_family tsp_family __ro_after_init = {
	.name = RS_TCPSP_FAMILY,
	.version = RS_TCPSP_VERSION,
	.maxattr = 0,
	.netnsok = true,
	.module = THIS_MODULE,
	.small_ops = tsp_ops,
	.n_small_ops = ARRAY_SIZE(tsp_ops),
	.resv_start_op = RS_TCPSP_C_COUNT,
	.mcgrps = tsp_mcgrps,
	.n_mcgrps = ARRAY_SIZE(tsp_mcgrps),
};

/* ---- lifetime -------------------------------------------------------------- */

static int tsp_netdev_event(struct notifier_block *nb, unsigned long event, void *ptr)
{
	struct net_device *dev = netdev_notifier_info_to_dev(ptr);
	struct tsp_table *tb, *tmp;

	if (event != NETDEV_UNREGISTER)
		return NOTIFY_DONE;
	mutex_lock(&tsp_lock);
	list_for_each_entry_safe(tb, tmp, &tsp_tables, node)
		if (tb->dev == dev) {
			pr_info("rs_tcpspmod: %s went away: its splice table with it\n", dev->name);
			tsp_destroy(tb);
		}
	mutex_unlock(&tsp_lock);
	return NOTIFY_DONE;
}

static struct notifier_block tsp_nb = { .notifier_call = tsp_netdev_event };

static void __net_exit tsp_net_exit(struct net *net)
{
	struct tsp_table *tb, *tmp;

	mutex_lock(&tsp_lock);
	list_for_each_entry_safe(tb, tmp, &tsp_tables, node)
		if (net_eq(tb->net, net))
			tsp_destroy(tb);
	mutex_unlock(&tsp_lock);
}

static struct pernet_operations tsp_net_ops = { .exit = tsp_net_exit };

static int __init tsp_init(void)
{
	int e = register_pernet_subsys(&tsp_net_ops);

	if (e)
		return e;
	e = register_netdevice_notifier(&tsp_nb);
	if (e)
		goto pernet;
	e = genl_register_family(&tsp_family);
	if (e)
		goto notifier;
	return 0;
notifier:
	unregister_netdevice_notifier(&tsp_nb);
pernet:
	unregister_pernet_subsys(&tsp_net_ops);
	return e;
}

static void __exit tsp_exit(void)
{
	struct tsp_table *tb, *tmp;

	genl_unregister_family(&tsp_family);
	unregister_netdevice_notifier(&tsp_nb);
	unregister_pernet_subsys(&tsp_net_ops);
	mutex_lock(&tsp_lock);
	list_for_each_entry_safe(tb, tmp, &tsp_tables, node)
		tsp_destroy(tb);
	mutex_unlock(&tsp_lock);
}

module_init(tsp_init);
module_exit(tsp_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("resplice tcpspmod: TCP splicing of rs-proxy's connections (netfilter, generic netlink)");
