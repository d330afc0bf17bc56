/*
 * insys.c - the syscall each watched thread is in, shared by the features
 * that need it: off-CPU analysis (why a thread waits) and syscall tracking
 * (latency: when the syscall began). One pair of raw_syscalls programs:
 * sys_enter records the syscall number (and with DN_INSYS_TS its start
 * time) in dn_insys, the thread's task storage; sys_exit calls the syscall
 * tracker's hook (DN_HOOK_SYSCALLS) and clears the record. Threads are
 * those tree.c's dn_wanted() selects.
 *
 * Options (-D): DN_INSYS_TS (keep start times), DN_INSYS_HASH (a hash by
 * thread id instead of task storage, for kernels without it), DN_HOOK_SYSCALLS (call
 * dn_syscalls_on_exit(), defined by syscalls.c, composed before this
 * file). With DN_HOOK_SYSCALLS and neither DN_INSYS_TS nor off-CPU
 * analysis (DN_HOOK_OFFCPU) nothing needs sys_enter, which is then left
 * out: counting costs one program per syscall. DN_INSYS_REGS (off-CPU
 * analysis alone): no program at all, the syscall is read from the user
 * registers when a thread blocks (below).
 */

#if defined(DN_KSTACK_REUSE) || defined(DN_LEAF_UNWIND) || defined(DN_INSYS_REGS) || defined(DN_USTACK_REUSE)
struct dn_regs_scratch {
	u64 ptr;
};
BPF_PERCPU_ARRAY(dn_regs_scratch, struct dn_regs_scratch, 1);

/* The address of the user registers the current task saved at kernel
 * entry (at the top of its kernel stack), or 0. The pointer is made a
 * number through a map: the verifier allows no arithmetic on it. */
static __always_inline u64 dn_user_regs(void)
{
	int zero = 0;
	struct dn_regs_scratch *sc = dn_regs_scratch.lookup(&zero);
	if (!sc)
		return 0;
	void *uregs = (void *)bpf_task_pt_regs((void *)bpf_get_current_task_btf());
	*(void *volatile *)&sc->ptr = uregs;
	return *(volatile u64 *)&sc->ptr;
}
#endif

#if defined(DN_INSYS_REGS) && !defined(DN_HOOK_SYSCALLS)
/*
 * The syscall the current thread is in, from the registers saved at
 * kernel entry: the SYSCALL instruction leaves the return address in rcx
 * and the flags in r11, so a syscall's saved registers have cx == ip and
 * r11 == flags (an interrupt or exception from user mode saves whatever
 * the program had there, equal only by chance), and orig_ax holds the
 * syscall number. A kernel thread has no user registers and is in no
 * syscall. Nothing runs per syscall.
 */
static __always_inline s32 dn_insys_nr(void)
{
	u64 r = dn_user_regs();
	if (!r)
		return -1;
	u64 cx = 0, ip = 0, r11 = 0, flags = 0, nr = 0;
	bpf_probe_read_kernel(&cx, 8, (void *)(r + DN_PT_REGS_CX));
	bpf_probe_read_kernel(&ip, 8, (void *)(r + DN_PT_REGS_IP));
	bpf_probe_read_kernel(&r11, 8, (void *)(r + DN_PT_REGS_R11));
	bpf_probe_read_kernel(&flags, 8, (void *)(r + DN_PT_REGS_FLAGS));
	bpf_probe_read_kernel(&nr, 8, (void *)(r + DN_PT_REGS_ORIG_AX));
	if (!ip || cx != ip || r11 != flags || (s64)nr < 0 || nr > 4096)
		return -1;
	return (s32)nr;
}

static __always_inline void dn_insys_thread_exit(u32 tid)
{
}
#else
struct dn_insys {
	s32 nr; /* -1: not in a syscall */
	u32 pad;
	u64 ts; /* bpf_ktime_get_ns() at entry (DN_INSYS_TS) */
};

#if defined(DN_INSYS_TS) || defined(DN_HOOK_OFFCPU) || !defined(DN_HOOK_SYSCALLS)
#define DN_INSYS_ENTER 1
#endif

#ifdef DN_INSYS_HASH
/* kernels without task storage (before 5.11) or BTF: a hash by thread
 * id, cleared when the thread exits (tree.c calls dn_insys_thread_exit) */
#ifndef DN_INSYS_KEYS
#define DN_INSYS_KEYS 65536
#endif
BPF_HASH(dn_insys, u32, struct dn_insys, DN_INSYS_KEYS);

static __always_inline struct dn_insys *dn_insys_current(void)
{
	u32 tid = bpf_get_current_pid_tgid();
	return dn_insys.lookup(&tid);
}

static __always_inline struct dn_insys *dn_insys_create(void)
{
	u32 tid = bpf_get_current_pid_tgid();
	struct dn_insys zero = { .nr = -1 };
	return dn_insys.lookup_or_try_init(&tid, &zero);
}

static __always_inline void dn_insys_thread_exit(u32 tid)
{
	dn_insys.delete(&tid);
}
#else
BPF_TASK_STORAGE(dn_insys, struct dn_insys);

/* The current thread's record, or NULL. */
static __always_inline struct dn_insys *dn_insys_current(void)
{
	return dn_insys.task_storage_get((void *)bpf_get_current_task_btf(), 0, 0);
}

static __always_inline struct dn_insys *dn_insys_create(void)
{
	return dn_insys.task_storage_get((void *)bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
}
#endif

/* The syscall the current thread is in, -1 if none. */
static __always_inline s32 dn_insys_nr(void)
{
	struct dn_insys *s = dn_insys_current();
	return s ? s->nr : -1;
}

#ifdef DN_INSYS_ENTER
TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	if (!dn_maybe_watched(tid) || !dn_wanted(id >> 32, tid))
		return 0;
	struct dn_insys *s = dn_insys_create();
	if (s) {
		s->nr = args->id;
#ifdef DN_INSYS_TS
		s->ts = bpf_ktime_get_ns();
#endif
	}
	return 0;
}
#endif

TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	if (!dn_maybe_watched(tid) || !dn_wanted(id >> 32, tid))
		return 0;
#ifdef DN_INSYS_ENTER
	struct dn_insys *s = dn_insys_current();
#endif
#ifdef DN_HOOK_SYSCALLS
	u64 lat = 0;
#ifdef DN_INSYS_TS
	if (s && s->nr == args->id && s->ts)
		lat = bpf_ktime_get_ns() - s->ts;
#endif
	dn_syscalls_on_exit(id >> 32, tid, args->id, args->ret, lat);
#endif
#ifdef DN_INSYS_ENTER
	if (s)
		s->nr = -1;
#endif
	return 0;
}
#endif
