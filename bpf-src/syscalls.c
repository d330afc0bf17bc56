/*
 * syscalls.c - syscall counts, errors and latency per (process, syscall),
 * or per (thread, syscall) with DN_SC_PER_THREAD, for the threads tree.c's
 * dn_wanted() selects. Compose before insys.c with -DDN_HOOK_SYSCALLS:
 * insys.c's sys_exit program calls dn_syscalls_on_exit() once per
 * syscall. Everything is summed in per-CPU maps in the kernel; user space
 * reads them at intervals and at the end.
 *
 * The filters a run asks for are in dn_sc_cfg, written before the probes
 * are attached (one compiled program serves every value): failed calls
 * only, calls failing with one errno only, and only the syscalls marked
 * in dn_sc_filter.
 *
 * Options (-D), which change the maps: DN_SC_BY_NR (totals per syscall
 * only, in an array), DN_SC_LATENCY (total, max and a log2 histogram of
 * the latency in ns; needs DN_INSYS_TS), DN_SC_PER_THREAD, DN_SC_KEYS.
 */
#ifndef DN_SC_KEYS
#define DN_SC_KEYS 16384
#endif
#define DN_SC_SLOTS 40 /* log2 buckets of ns: up to 2^39 ns, 9 minutes */
#define DN_SC_NRS 1024 /* syscall numbers the filter covers */

struct dn_sc_key {
	u32 tgid;
	u32 tid; /* 0 unless DN_SC_PER_THREAD */
	s32 nr;
	u32 pad;
};

struct dn_sc_val {
	u64 count;
	u64 errors;
	char comm[16]; /* the thread's name when the entry was made */
#ifdef DN_SC_LATENCY
	u64 timed; /* calls whose start was seen: total_ns, max_ns, hist */
	u64 total_ns;
	u64 max_ns;
	u64 hist[DN_SC_SLOTS]; /* slot k: [2^(k-1), 2^k) ns, as bcc's log2 histograms */
#endif
};

struct dn_sc_err_key {
	u32 tgid;
	u32 tid;
	s32 nr;
	s32 err; /* errno */
};

#ifdef DN_SC_BY_NR
/* totals per syscall only (no -P): an array, no hashing */
BPF_PERCPU_ARRAY(dn_sc_nr, struct dn_sc_val, DN_SC_NRS);
#else
BPF_PERCPU_HASH(dn_sc, struct dn_sc_key, struct dn_sc_val, DN_SC_KEYS);
#endif
BPF_PERCPU_HASH(dn_sc_errs, struct dn_sc_err_key, u64, DN_SC_KEYS);
/* [0] calls not counted because dn_sc or dn_sc_errs was full */
BPF_PERCPU_ARRAY(dn_sc_dropped, u64, 1);
/* the syscalls counted when dn_sc_cfg.filter is set */
BPF_ARRAY(dn_sc_filter, u8, DN_SC_NRS);

struct dn_sc_cfg {
	u32 failed; /* failed calls only */
	s32 err;    /* only calls failing with this errno (0: any) */
	u32 filter; /* only the syscalls marked in dn_sc_filter */
	u32 pad;
};
BPF_ARRAY(dn_sc_cfg, struct dn_sc_cfg, 1);

static __always_inline void dn_sc_drop(void)
{
	int zero = 0;
	u64 *d = dn_sc_dropped.lookup(&zero);
	if (d)
		(*d)++;
}

static __always_inline void dn_syscalls_on_exit(u32 tgid, u32 tid, s32 nr, long ret, u64 lat_ns)
{
	/* -4095..-1: an error (the kernel's MAX_ERRNO) */
	int failed = ret < 0 && ret >= -4095;
	u32 zero = 0;
	struct dn_sc_cfg *cfg = dn_sc_cfg.lookup(&zero);
	if (!cfg || (cfg->failed && !failed) || (cfg->err && ret != -(long)cfg->err))
		return;
	if (cfg->filter) {
		u32 i = nr;
		u8 *want = dn_sc_filter.lookup(&i);
		if (!want || !*want)
			return;
	}
	struct dn_sc_key k = {};
#ifdef DN_SC_BY_NR
	u32 idx = nr;
	struct dn_sc_val *v = dn_sc_nr.lookup(&idx);
	if (!v) {
		dn_sc_drop();
		return;
	}
#else
	k.tgid = tgid;
#ifdef DN_SC_PER_THREAD
	k.tid = tid;
#endif
	k.nr = nr;
	struct dn_sc_val *v = dn_sc.lookup(&k);
	if (!v) {
		struct dn_sc_val zero = {};
		bpf_get_current_comm(zero.comm, sizeof(zero.comm));
		dn_sc.insert(&k, &zero);
		v = dn_sc.lookup(&k);
		if (!v) {
			dn_sc_drop();
			return;
		}
	}
#endif
	v->count++;
#ifdef DN_SC_LATENCY
	/* 0: its start was not seen (begun before tracing, or a new
	 * thread's return from clone) */
	if (!lat_ns)
		goto errors;
	v->timed++;
	v->total_ns += lat_ns;
	if (lat_ns > v->max_ns)
		v->max_ns = lat_ns;
	v->hist[DN_BOUND(bpf_log2l(lat_ns), DN_SC_SLOTS - 1)]++;
errors:
#endif
	if (failed) {
		v->errors++;
		struct dn_sc_err_key ek = {};
		ek.tgid = k.tgid;
		ek.tid = k.tid;
		ek.nr = nr;
		ek.err = -ret;
		u64 *c = dn_sc_errs.lookup(&ek);
		if (c) {
			(*c)++;
		} else {
			u64 one = 1;
			if (dn_sc_errs.update(&ek, &one) != 0)
				dn_sc_drop();
		}
	}
}
