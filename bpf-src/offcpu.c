/*
 * offcpu.c - where and why threads block: at sched_switch the thread
 * switching out (the current task) gets its stacks and the syscall it is
 * in recorded; when it switches back in, the time it was off the CPU is
 * added, in the kernel, to its (tgid, tid, user stack, kernel stack,
 * state, syscall) entry. No per-switch record reaches user space. Needs
 * tree.c and insys.c before it and switch.c (-DDN_HOOK_OFFCPU) after it;
 * the threads watched are tree.c's dn_wanted().
 *
 * Options (-D): DN_OFFCPU_MIN_NS / DN_OFFCPU_MAX_NS
 * (block length filter), DN_OFFCPU_STATES (bit mask of task states kept:
 * bit 0 = preempted while runnable, bit N+1 = state bit N), DN_NO_USTACK /
 * DN_NO_KSTACK, DN_STACK_STORAGE, DN_OFFCPU_KEYS.
 */
#ifndef DN_OFFCPU_MIN_NS
#define DN_OFFCPU_MIN_NS 0ULL
#endif
#ifndef DN_OFFCPU_MAX_NS
#define DN_OFFCPU_MAX_NS 0xffffffffffffffffULL
#endif
#ifndef DN_OFFCPU_STATES
#define DN_OFFCPU_STATES 0xffffffffULL
#endif
#ifndef DN_STACK_STORAGE
#define DN_STACK_STORAGE 16384
#endif
#ifndef DN_OFFCPU_KEYS
#define DN_OFFCPU_KEYS 40960
#endif

struct dn_offcpu_key {
	u32 tgid, tid;
	s32 ustack, kstack;
	u32 state;
	s32 syscall;
};

struct dn_offcpu_val {
	u64 total_ns, count, max_ns, min_ns;
};

/* per thread: when it started and ended (0: before / after tracing), its
 * time blocked and waiting for a CPU, its name at its last switch, and
 * the block it is in now (start != 0): one map entry serves both ends of
 * a switch. On-CPU time is the rest of its wall time. */
struct dn_offcpu_thread {
	u32 tgid, pad;
	u64 born, died;
	u64 offcpu_ns, runq_ns;
	char comm[16];
	u64 start;    /* when the current block began; 0: running */
	s32 ustack, kstack;
	u32 state;    /* prev_state & DN_TASK_STATE_MASK; 0: preempted */
	s32 syscall;  /* -1: not in a syscall */
};

BPF_HASH(dn_offcpu, struct dn_offcpu_key, struct dn_offcpu_val, DN_OFFCPU_KEYS);
BPF_HASH(dn_offcpu_threads, u32, struct dn_offcpu_thread, 65536);
BPF_STACK_TRACE(dn_offcpu_stacks, DN_STACK_STORAGE);
BPF_ARRAY(dn_offcpu_missed, u64, 2); /* [0] user stacks, [1] kernel stacks */

static __always_inline void dn_offcpu_missed_inc(int which)
{
	u64 *c = dn_offcpu_missed.lookup(&which);
	if (c)
		__sync_fetch_and_add(c, 1);
}

static __always_inline void dn_offcpu_thread_start(u32 tid, u32 tgid)
{
	struct dn_offcpu_thread z = {};
	z.tgid = tgid;
	z.born = bpf_ktime_get_ns();
	dn_offcpu_threads.update(&tid, &z);
}

static __always_inline void dn_offcpu_thread_exit(u32 tid)
{
	struct dn_offcpu_thread *th = dn_offcpu_threads.lookup(&tid);
	if (th)
		th->died = bpf_ktime_get_ns();
}

static __always_inline void dn_offcpu_on_switch(void *ctx, u32 prev, long prev_state, u32 next)
{
	u64 now = bpf_ktime_get_ns();
	u32 tgid = bpf_get_current_pid_tgid() >> 32; /* current is prev */

	if (dn_wanted(tgid, prev)) {
		struct dn_offcpu_thread *th = dn_offcpu_threads.lookup(&prev);
		if (!th) {
			/* running since before tracing began */
			struct dn_offcpu_thread z = {};
			z.tgid = tgid;
			dn_offcpu_threads.update(&prev, &z);
			th = dn_offcpu_threads.lookup(&prev);
		}
		if (th) {
			bpf_get_current_comm(th->comm, sizeof(th->comm));
			u32 st = prev_state & DN_TASK_STATE_MASK;
			u64 bitpos = st ? (u64)st << 1 : 1;
			if (DN_OFFCPU_STATES & bitpos) {
				th->start = now;
				th->state = st;
#ifdef DN_NO_KSTACK
				th->kstack = -1;
#else
				th->kstack = dn_offcpu_stacks.get_stackid(ctx, 0);
				if (th->kstack < 0)
					dn_offcpu_missed_inc(1);
#endif
#ifdef DN_NO_USTACK
				th->ustack = -1;
#else
				th->ustack = dn_offcpu_stacks.get_stackid(ctx, BPF_F_USER_STACK);
				if (th->ustack < 0)
					dn_offcpu_missed_inc(0);
#endif
				s32 *nr = dn_insys.lookup(&prev);
				th->syscall = nr ? *nr : -1;
			}
		}
	}

	struct dn_offcpu_thread *nt = dn_offcpu_threads.lookup(&next);
	if (!nt || !nt->start)
		return;
	u64 d = now - nt->start;
	nt->start = 0;
	if (nt->state)
		nt->offcpu_ns += d;
	else
		nt->runq_ns += d;
	if (d >= DN_OFFCPU_MIN_NS && d <= DN_OFFCPU_MAX_NS) {
		struct dn_offcpu_key k = {};
		k.tgid = nt->tgid;
		k.tid = next;
		k.ustack = nt->ustack;
		k.kstack = nt->kstack;
		k.state = nt->state;
		k.syscall = nt->syscall;
		struct dn_offcpu_val zero = {}, *v = dn_offcpu.lookup_or_try_init(&k, &zero);
		if (v) {
			__sync_fetch_and_add(&v->total_ns, d);
			__sync_fetch_and_add(&v->count, 1);
			if (d > v->max_ns)
				v->max_ns = d;
			if (!v->min_ns || d < v->min_ns)
				v->min_ns = d;
		}
	}
}
