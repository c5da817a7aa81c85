/* Constants of the tc program: where the headers it rewrites sit in a frame
 * (Ethernet, then an option-less IPv4 header: only those are spliced). */
#ifndef RS_BPF_CONSTS_H
#define RS_BPF_CONSTS_H

#define ETH_HLEN_    14
#define IP_CSUM_OFF  (ETH_HLEN_ + 10)
#define IP_SADDR_OFF (ETH_HLEN_ + 12)
#define IP_DADDR_OFF (ETH_HLEN_ + 16)
#define TCP_OFF      (ETH_HLEN_ + 20)
#define TCP_CSUM_OFF (TCP_OFF + 16)

#endif /* RS_BPF_CONSTS_H */
