/*
 * net.c - network bytes per process: what the watched threads (tree.c's
 * dn_wanted()) sent and received over TCP/UDP sockets, summed per process
 * in the kernel and kept after it exits (the run's totals never go down).
 *
 * From 6.3 the socket layer has tracepoints for every send and receive,
 * whatever the syscall (send*, recv*, write, read, writev on a socket):
 * sock:sock_send_length and sock:sock_recv_length, with the socket's
 * family (IPv4 and IPv6 are counted; Unix sockets are not) and the bytes
 * (a negative value is an error; a receive with MSG_PEEK moves nothing).
 *
 * Before 6.3 (-DDN_NET_SYSCALLS): the return values of the socket
 * syscalls that carry data (sendto, sendmsg, recvfrom, recvmsg), from a
 * raw tracepoint on sys_exit (a receive with MSG_PEEK, from the saved
 * registers, is left out). Those syscalls name no family, so Unix
 * sockets driven by them count too, and read/write on a socket are not
 * seen (docs/monitor.md says so).
 */
#ifndef DN_NET_KEYS
#define DN_NET_KEYS 16384
#endif

struct dn_net_val {
	u64 rx;
	u64 tx;
};

BPF_PERCPU_HASH(dn_net, u32, struct dn_net_val, DN_NET_KEYS);
/* [0] sends and receives not counted: dn_net was full */
BPF_PERCPU_ARRAY(dn_net_dropped, u64, 1);

static __always_inline void dn_net_add(u32 tgid, u64 rx, u64 tx)
{
	struct dn_net_val zero = {};
	struct dn_net_val *v = dn_net.lookup_or_try_init(&tgid, &zero);
	if (!v) {
		int k = 0;
		u64 *d = dn_net_dropped.lookup(&k);
		if (d)
			*d += 1;
		return;
	}
	v->rx += rx;
	v->tx += tx;
}

#define DN_MSG_PEEK 2

#ifndef DN_NET_SYSCALLS
#define DN_AF_INET 2
#define DN_AF_INET6 10

static __always_inline void dn_net_sock(u16 family, int ret, int flags, int is_rx)
{
	if (ret <= 0 || (family != DN_AF_INET && family != DN_AF_INET6))
		return;
	if (is_rx && (flags & DN_MSG_PEEK))
		return;
	u64 id = bpf_get_current_pid_tgid();
	if (!dn_wanted(id >> 32, (u32)id))
		return;
	dn_net_add(id >> 32, is_rx ? (u64)ret : 0, is_rx ? 0 : (u64)ret);
}

TRACEPOINT_PROBE(sock, sock_send_length)
{
	dn_net_sock(args->family, args->ret, args->flags, 0);
	return 0;
}

TRACEPOINT_PROBE(sock, sock_recv_length)
{
	dn_net_sock(args->family, args->ret, args->flags, 1);
	return 0;
}
#else
/* x86-64 numbers of the socket syscalls that carry data */
#define DN_NR_SENDTO 44
#define DN_NR_RECVFROM 45
#define DN_NR_SENDMSG 46
#define DN_NR_RECVMSG 47

RAW_TRACEPOINT_PROBE(sys_exit)
{
	s64 ret = (s64)ctx->args[1];
	if (ret <= 0)
		return 0;
	u64 nr = 0;
	bpf_probe_read_kernel(&nr, 8, (void *)(ctx->args[0] + DN_PT_REGS_ORIG_AX));
	int rx = nr == DN_NR_RECVFROM || nr == DN_NR_RECVMSG;
	if (!rx && nr != DN_NR_SENDTO && nr != DN_NR_SENDMSG)
		return 0;
	if (rx) {
		/* a peek moves nothing: the flags are recvfrom's 4th argument
		 * (r10), recvmsg's 3rd (rdx), as the task saved them */
		u64 flags = 0;
		bpf_probe_read_kernel(&flags, 8,
		                      (void *)(ctx->args[0] + (nr == DN_NR_RECVFROM ? DN_PT_REGS_R10 : DN_PT_REGS_DX)));
		if (flags & DN_MSG_PEEK)
			return 0;
	}
	u64 id = bpf_get_current_pid_tgid();
	if (!dn_wanted(id >> 32, (u32)id))
		return 0;
	dn_net_add(id >> 32, rx ? (u64)ret : 0, rx ? 0 : (u64)ret);
	return 0;
}
#endif
