// The minimal XDP program the gateway is measured against (`bench xdp`): parse Ethernet and
// IPv4/IPv6, one LPM lookup of the source, drop when the longest match says deny. No VLANs,
// no counters, no bans, no rate limits. Self-contained: no kernel or libbpf headers needed.
// Built by the bench with `clang -O2 -g -target bpf`.

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#define BPF_MAP_TYPE_LPM_TRIE 11
#define BPF_F_NO_PREALLOC 1
#define XDP_DROP 1
#define XDP_PASS 2
#define ACTION_DENY 1

struct xdp_md {
    __u32 data;
    __u32 data_end;
    __u32 data_meta;
    __u32 ingress_ifindex;
    __u32 rx_queue_index;
    __u32 egress_ifindex;
};

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;

struct key_v4 {
    __u32 prefix_len;
    __u8 addr[4];
};
struct key_v6 {
    __u32 prefix_len;
    __u8 addr[16];
};

// Value: the action (ACTION_DENY or not); max_entries is set by the bench at load.
struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __type(key, struct key_v4);
    __type(value, __u32);
    __uint(max_entries, 1024);
    __uint(map_flags, BPF_F_NO_PREALLOC);
} REF_RULES_V4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __type(key, struct key_v6);
    __type(value, __u32);
    __uint(max_entries, 1024);
    __uint(map_flags, BPF_F_NO_PREALLOC);
} REF_RULES_V6 SEC(".maps");

SEC("xdp")
int xdp_reference(struct xdp_md *ctx) {
    __u8 *data = (__u8 *)(long)ctx->data;
    __u8 *end = (__u8 *)(long)ctx->data_end;
    if (data + 14 > end)
        return XDP_PASS;
    __u16 ethertype = (__u16)(data[12] << 8 | data[13]);
    __u32 *action = 0;
    if (ethertype == 0x0800) {
        if (data + 14 + 20 > end)
            return XDP_PASS;
        struct key_v4 key = {.prefix_len = 32};
        __builtin_memcpy(key.addr, data + 14 + 12, 4);
        action = bpf_map_lookup_elem(&REF_RULES_V4, &key);
    } else if (ethertype == 0x86dd) {
        if (data + 14 + 40 > end)
            return XDP_PASS;
        struct key_v6 key = {.prefix_len = 128};
        __builtin_memcpy(key.addr, data + 14 + 8, 16);
        action = bpf_map_lookup_elem(&REF_RULES_V6, &key);
    }
    return action && *action == ACTION_DENY ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
