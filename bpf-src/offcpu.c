/*
 * offcpu.c - where and why threads block: at sched_switch the thread
 * switching out (the current task) gets its stacks and the syscall it is
 * in recorded; when it switches back in, the time it was off the CPU is
 * added, in the kernel, to its (tgid, tid, user stack, kernel stack,
 * state, syscall) entry. No per-switch record reaches user space. Needs
 * tree.c and insys.c before it and switch.c (-DDN_HOOK_OFFCPU) after it;
 * the threads watched are tree.c's dn_wanted().
 *
 * The filters a run asks for are in dn_offcpu_cfg, written before the
 * probes are attached (one compiled program serves every value): the
 * block length (min_ns, max_ns), the task states kept (a bit mask: bit 0
 * preempted while runnable, bit N+1 state bit N; 0: all), and user or
 * kernel threads only.
 *
 * Options (-D), which change what is compiled: DN_NO_USTACK /
 * DN_NO_KSTACK, DN_STACK_STORAGE, DN_OFFCPU_KEYS, DN_TASK_FLAGS_OFF (the
 * byte offset of task_struct.flags in the running kernel, from its BTF),
 * DN_KSTACK_REUSE / DN_KSTACK_VERIFY, DN_USTACK_REUSE / DN_USTACK_VERIFY,
 * DN_LEAF_UNWIND (each below), DN_DWARF_UNWIND (user stacks walked from
 * unwind tables: unwind.c).
 */
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
	s32 pystack; /* its Python frames (python.c; 0: none) */
	u32 pad;
	u64 leaf[DN_LEAF_FRAMES]; /* frames the user stack walk lost (DN_LEAF_UNWIND) */
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
	u64 start; /* when the current block began; 0: running */
	s32 ustack, kstack;
	u32 state;   /* prev_state & DN_TASK_STATE_MASK; 0: preempted */
	s32 syscall; /* -1: not in a syscall */
	s32 pystack; /* its Python frames (python.c; 0: none) */
	u32 pad2;
	u64 leaf[DN_LEAF_FRAMES];
	/* how long the current block had lasted when tracing began (user
	 * space writes it for threads blocked then; 0 for blocks seen) */
	u64 before;
	u64 runtime; /* its CPU time (se.sum_exec_runtime) at its last switch-out */
};

enum dn_offcpu_threads { DN_OFFCPU_ALL_THREADS = 0, DN_OFFCPU_USER_THREADS = 1, DN_OFFCPU_KERNEL_THREADS = 2 };
struct dn_offcpu_cfg {
	u64 min_ns;  /* blocks at least this long */
	u64 max_ns;  /* and at most this long (0: no limit) */
	u64 states;  /* task states kept (see above; 0: all) */
	u32 threads; /* enum dn_offcpu_threads */
	u32 pad;
};
BPF_ARRAY(dn_offcpu_cfg, struct dn_offcpu_cfg, 1);

BPF_HASH(dn_offcpu, struct dn_offcpu_key, struct dn_offcpu_val, DN_OFFCPU_KEYS);
BPF_HASH(dn_offcpu_threads, u32, struct dn_offcpu_thread, 65536);
BPF_STACK_TRACE(dn_offcpu_stacks, DN_STACK_STORAGE);
/* Stacks not read, by kind and why: [4 * k + r], k 0 user, 1 kernel;
 * r 0 the stack's bucket held another stack (-EEXIST), 1 the stack map
 * was full (-ENOMEM), 2 the walk faulted (-EFAULT), 3 other. */
BPF_ARRAY(dn_offcpu_missed, u64, 8);
/* [0] blocks that ended (whatever the length filters keep), for a live
 * count; [1] blocks kept by the filters whose entry could not be stored;
 * blocks whose ending switch was not seen (the thread switched out
 * again): [3] those whose end was found from the thread's CPU time
 * (counted in [0] too), [2] the others (missing) */
BPF_PERCPU_ARRAY(dn_offcpu_seen, u64, 4);

/* the user stack id of a kernel thread: it has none (not a miss) */
#define DN_STACK_NONE (-1000)
/* a user stack being walked (unwind.c) */
#define DN_UW_PENDING (-3000)

static __always_inline void dn_offcpu_missed_inc(int which, s32 err)
{
	int i = which * 4 + (err == -17 ? 0 : err == -12 ? 1 : err == -14 ? 2 : 3);
	u64 *c = dn_offcpu_missed.lookup(&i);
	if (c)
		__sync_fetch_and_add(c, 1);
}

/* Is the current task a kernel thread (PF_KTHREAD)? The offset of
 * task_struct.flags comes from the running kernel's BTF
 * (-DDN_TASK_FLAGS_OFF); without it every thread is walked as a user one. */
/* The current task's CPU time (se.sum_exec_runtime; 0 when the kernel's
 * BTF does not place it): a plain load where the task pointer is typed
 * by BTF (the verifier checks the field), else a probe read. */
static __always_inline u64 dn_current_runtime(void)
{
#if defined(DN_TASK_RUNTIME_OFF) && defined(DN_TASK_BTF_LOAD)
	return *(volatile u64 *)((char *)bpf_get_current_task_btf() + DN_TASK_RUNTIME_OFF);
#elif defined(DN_TASK_RUNTIME_OFF)
	u64 runtime = 0;
	bpf_probe_read_kernel(&runtime, sizeof(runtime), (char *)bpf_get_current_task() + DN_TASK_RUNTIME_OFF);
	return runtime;
#else
	return 0;
#endif
}

static __always_inline int dn_current_kthread(void)
{
#ifdef DN_TASK_FLAGS_OFF
	u32 flags = 0;
	bpf_probe_read_kernel(&flags, sizeof(flags), (void *)(bpf_get_current_task() + DN_TASK_FLAGS_OFF));
	return (flags & 0x00200000) != 0;
#else
	return 0;
#endif
}

#ifdef DN_LEAF_UNWIND
/*
 * The frames a frame pointer walk loses. glibc is built without frame
 * pointers: when a thread blocks in a libc function, the walk (which
 * follows rbp) goes from that function's IP straight to the return
 * address of the nearest caller that keeps a frame pointer, and the
 * functions in between are missing: `outer -> step -> clock_nanosleep`
 * shows as `outer -> clock_nanosleep`. They are recovered from the call
 * frame information (.eh_frame) of their files. User space turns an IP
 * into a rule: the CFA as an offset from the stack pointer, and where the
 * return address is saved from the CFA (the one rule of a function built
 * without frame pointers), or "stop" for a function that keeps a frame
 * pointer (the walk sees past it). At a block the rules are applied from
 * the user registers saved at kernel entry, up to DN_LEAF_FRAMES frames;
 * the frames found are kept with the block (key.leaf) and spliced in
 * after the IP. An IP without a rule yet is sent to user space once
 * (dn_leaf_ask, with a placeholder rule so it is not sent again), which
 * also learns the rules of the frames above it from the blocked thread's
 * stack; blocks before the rules arrive go without the frames.
 */
struct dn_leaf_rule {
	s32 cfa, ra;
	u32 unwind;  /* 0: stop here */
	u32 pending; /* asked, no rule yet */
};
/* requests (struct dn_leaf_ask, dn_records.h) */
BPF_HASH(dn_leaf_rules, struct dn_leaf_key, struct dn_leaf_rule, 16384);
BPF_RINGBUF_OUTPUT(dn_leaf_ask, 8);

#define DN_LEAF_FINAL 0x100 /* in dn_leaf_unwind's result: no rule was missing */
#define DN_LEAF_WANT 0x200  /* in dn_leaf_unwind's result: a rule not learnt yet */
/* [0] blocks whose frames were cut short for want of a rule (the rules
 * were asked for and had not arrived) */
BPF_PERCPU_ARRAY(dn_leaf_stats, u64, 1);

/* Count a block whose lost frames are res (dn_leaf_unwind's result). */
static __always_inline void dn_leaf_count(u32 res)
{
	int i = 0;
	u64 *c = dn_leaf_stats.lookup(&i);
	if (c && (res & DN_LEAF_WANT))
		(*c)++;
}

/* The frames the walk lost, into out; at: where each was read. Returns
 * how many, | DN_LEAF_FINAL when the unwind ended by a rule (a function
 * with a frame pointer, or DN_LEAF_FRAMES reached) rather than for want of
 * one: only then is the result the same the next time the same words are
 * there. */
static __always_inline u32 dn_leaf_unwind(u32 tgid, u64 *out, u64 *at)
{
	u64 regs = dn_user_regs();
	if (!regs)
		return 0;
	u64 ip = 0, sp = 0;
	bpf_probe_read_kernel(&ip, 8, (void *)(regs + DN_PT_REGS_IP));
	bpf_probe_read_kernel(&sp, 8, (void *)(regs + DN_PT_REGS_SP));
	struct dn_leaf_key k = {};
	k.tgid = tgid;
#pragma unroll
	for (int i = 0; i < DN_LEAF_FRAMES; i++) {
		k.ip = ip;
		k.is_return = i > 0;
		struct dn_leaf_rule *r = dn_leaf_rules.lookup(&k);
		if (!r) {
			struct dn_leaf_rule p = {};
			p.pending = 1;
			if (dn_leaf_rules.update(&k, &p) == 0) {
				struct dn_leaf_ask a = {};
				a.key = k;
				a.sp = sp;
				a.tid = bpf_get_current_pid_tgid();
				dn_leaf_ask.ringbuf_output(&a, sizeof(a), 0);
			}
			return i | DN_LEAF_WANT;
		}
		if (r->pending)
			return i | DN_LEAF_WANT;
		if (!r->unwind)
			return i | DN_LEAF_FINAL;
		u64 cfa = sp + (s64)r->cfa, ra = 0;
		at[i] = cfa + (s64)r->ra;
		if (bpf_probe_read_user(&ra, 8, (void *)at[i]) < 0 || !ra)
			return i;
		out[i] = ra;
		sp = cfa;
		ip = ra;
	}
	return DN_LEAF_FRAMES | DN_LEAF_FINAL;
}
#endif

#if defined(DN_USTACK_REUSE) && !defined(DN_DWARF_UNWIND)
/*
 * User stack reuse. The kernel's frame-pointer walk of a user stack is a
 * function of the registers saved at kernel entry (ip, sp, bp) and of the
 * memory it reads: at each frame address the next frame address and the
 * return address, until a frame address that cannot be read. A template
 * keeps, for (tgid, ip, sp, bp), the stack id and every word the walk read,
 * and where it ended. When the same words are there again and the end
 * still cannot be read, the walk would give the same stack, and its id is
 * reused. Templates are made in user space from what a walk here read
 * (dn_ut_learn), once checked against the stack the kernel stored.
 * -DDN_USTACK_VERIFY walks on every reuse too (and unwinds the lost frames
 * again) and counts disagreements.
 * -DDN_MMAP_MIN_ADDR: vm.mmap_min_addr (nothing is ever mapped below it).
 */
#ifndef DN_MMAP_MIN_ADDR
#define DN_MMAP_MIN_ADDR 0ULL
#endif

/* templates: struct dn_ut_key -> struct dn_ut; walks sent as struct
 * dn_ut_rec (dn_records.h) */
BPF_HASH(dn_ut, struct dn_ut_key, struct dn_ut, 8192);
BPF_RINGBUF_OUTPUT(dn_ut_learn, 32);
/* [0] reuses, [1] walks, [2] reuses a walk disagreed with (verify mode) */
BPF_PERCPU_ARRAY(dn_ut_stats, u64, 3);

static __always_inline void dn_ut_count(int i)
{
	u64 *c = dn_ut_stats.lookup(&i);
	if (c)
		(*c)++;
}

#define DN_UT_SLOT(i)                                                                                            \
	if ((i) < n) {                                                                                           \
		u64 w[2] = {};                                                                                   \
		if (bpf_probe_read_user(w, 16, (void *)t->fp[i]) < 0 || w[0] != t->next[i] || w[1] != t->ret[i]) \
			return 0;                                                                                \
	}

/* clang-format off */
static __always_inline int dn_ut_match(struct dn_ut *t)
{
	u32 n = t->n;
	DN_UT_SLOT(0) DN_UT_SLOT(1) DN_UT_SLOT(2) DN_UT_SLOT(3)
	DN_UT_SLOT(4) DN_UT_SLOT(5) DN_UT_SLOT(6) DN_UT_SLOT(7)
	/* an end below the lowest address user space may map (vm.mmap_min_addr,
	 * typically 0: _start clears rbp) or above user space cannot be read:
	 * no need to take the fault again */
	if (t->end < DN_MMAP_MIN_ADDR || t->end >= 0x00007ffffffff000ULL)
		return 1;
	u64 w[2];
	return bpf_probe_read_user(w, 16, (void *)t->end) < 0;
}
/* clang-format on */

#ifdef DN_LEAF_UNWIND
/* The frames the walk lost, for a reused stack: the template's, when the
 * words they were read from are still the same, else unwound again (and
 * kept with the template when final). */
static __always_inline void dn_ut_leaf(struct dn_ut *t, u32 tgid, u64 *leaf)
{
	if (t->leaf_ok) {
		u32 n = t->nleaf;
		int same = 1;
#pragma unroll
		for (int i = 0; i < DN_LEAF_FRAMES; i++) {
			u64 v = 0;
			if (i < n && (bpf_probe_read_user(&v, 8, (void *)t->leaf_at[i]) < 0 || v != t->leaf_val[i]))
				same = 0;
		}
		if (same) {
#pragma unroll
			for (int i = 0; i < DN_LEAF_FRAMES; i++)
				leaf[i] = i < n ? t->leaf_val[i] : 0;
#ifdef DN_USTACK_VERIFY
			/* unwind as well, and count a different answer as wrong */
			u64 again[DN_LEAF_FRAMES] = {}, at[DN_LEAF_FRAMES] = {};
			u32 res = dn_leaf_unwind(tgid, again, at);
			if ((res & DN_LEAF_FINAL) &&
			    (again[0] != leaf[0] || again[1] != leaf[1] || again[2] != leaf[2]))
				dn_ut_count(2);
#endif
			return;
		}
	}
	u64 at[DN_LEAF_FRAMES] = {};
	u32 res = dn_leaf_unwind(tgid, leaf, at);
	dn_leaf_count(res);
	if (res & DN_LEAF_FINAL) {
		t->leaf_ok = 0;
		t->nleaf = res & 0xff;
#pragma unroll
		for (int i = 0; i < DN_LEAF_FRAMES; i++) {
			t->leaf_at[i] = at[i];
			t->leaf_val[i] = leaf[i];
		}
		t->leaf_ok = 1;
	}
}
#endif

/* The user stack id of the current task, reusing a template when its
 * words are all still there, else walking (and sending what the walk
 * read, for a template). leaf: the frames the walk lost (DN_LEAF_UNWIND;
 * zeros otherwise). */
static __always_inline s32 dn_ustack_id(void *ctx, u32 tgid, u64 *leaf)
{
	__builtin_memset(leaf, 0, 8 * DN_LEAF_FRAMES);
	u64 regs = dn_user_regs();
	if (!regs)
		return dn_offcpu_stacks.get_stackid(ctx, BPF_F_USER_STACK);
	struct dn_ut_key key = {};
	key.tgid = tgid;
	bpf_probe_read_kernel(&key.ip, 8, (void *)(regs + DN_PT_REGS_IP));
	bpf_probe_read_kernel(&key.sp, 8, (void *)(regs + DN_PT_REGS_SP));
	bpf_probe_read_kernel(&key.bp, 8, (void *)(regs + DN_PT_REGS_BP));
	struct dn_ut *t = dn_ut.lookup(&key);
	if (t && dn_ut_match(t)) {
		dn_ut_count(0);
#ifdef DN_USTACK_VERIFY
		if (dn_offcpu_stacks.get_stackid(ctx, BPF_F_USER_STACK) != t->ustack)
			dn_ut_count(2);
#endif
#ifdef DN_LEAF_UNWIND
		dn_ut_leaf(t, tgid, leaf);
#endif
		return t->ustack;
	}
	s32 id = dn_offcpu_stacks.get_stackid(ctx, BPF_F_USER_STACK);
	dn_ut_count(1);
	if (id < 0)
		return id;
	struct dn_ut_rec *r = dn_ut_learn.ringbuf_reserve(sizeof(struct dn_ut_rec));
	if (!r) {
#ifdef DN_LEAF_UNWIND
		u64 at[DN_LEAF_FRAMES] = {};
		dn_leaf_count(dn_leaf_unwind(tgid, leaf, at));
#endif
		return id;
	}
	r->key = key;
	r->t.ustack = id;
	r->t.n = DN_UT_FRAMES + 1; /* too deep unless the walk below ends */
	u64 fp = key.bp;
#pragma unroll
	for (int i = 0; i < DN_UT_FRAMES; i++) {
		u64 w[2] = {};
		if (bpf_probe_read_user(w, 16, (void *)fp) < 0) {
			r->t.n = i;
			r->t.end = fp;
			break;
		}
		r->t.fp[i] = fp;
		r->t.next[i] = w[0];
		r->t.ret[i] = w[1];
		fp = w[0];
	}
	if (r->t.n > DN_UT_FRAMES) {
		u64 w[2];
		if (bpf_probe_read_user(w, 16, (void *)fp) < 0) {
			r->t.n = DN_UT_FRAMES;
			r->t.end = fp;
		}
	}
	r->t.nleaf = 0;
	r->t.leaf_ok = 0;
#ifdef DN_LEAF_UNWIND
	u32 res = dn_leaf_unwind(tgid, leaf, r->t.leaf_at);
	dn_leaf_count(res);
	r->t.nleaf = res & 0xff;
	r->t.leaf_ok = (res & DN_LEAF_FINAL) != 0;
#pragma unroll
	for (int i = 0; i < DN_LEAF_FRAMES; i++)
		r->t.leaf_val[i] = leaf[i];
#endif
	dn_ut_learn.ringbuf_submit(r, 0);
	return id;
}
#endif

/* A raw tracepoint's kernel stack walk begins in this program itself:
 * that frame is left out. */
#ifdef DN_SWITCH_RAW
#define DN_KSTACK_FLAGS 1
#else
#define DN_KSTACK_FLAGS 0
#endif

#ifdef DN_KSTACK_REUSE
/*
 * Kernel stack reuse. Walking the kernel stack (the ORC unwinder) is most
 * of the cost of a switch-out, and a thread usually blocks where it
 * blocked before. A template remembers, for one blocking place, the stack
 * id and where on the kernel stack each address of that stack was found
 * (its slots). The unwinder is deterministic: the same return addresses
 * at the same places give the same stack. So when every slot holds the
 * same value again, the id is reused without a walk.
 *
 * Places: slots of the syscall entry, in the last DN_KT_OUTER bytes of the
 * kernel stack, are at fixed places from its top (found from
 * bpf_task_pt_regs, no struct layout needed); the others move with the
 * random offset the kernel puts on the stack at each syscall, and are kept
 * relative to the stack pointer the tracepoint saved in its registers
 * (whose pointer is the first word of the tracepoint's record) or, as a
 * raw tracepoint (-DDN_SWITCH_RAW), to its arguments, an array on the
 * stack of the kernel function that runs the program.
 * Templates are learnt in user space from a copy of the stack memory sent
 * with each walked stack, and used only after one walk confirmed them.
 * -DDN_KSTACK_VERIFY walks on every reuse too and counts reuses the walk
 * disagrees with (for the benchmark).
 */
/* DN_KT_SLOTS, DN_KT_INNER (bytes sent from the tracepoint's sp up) and
 * DN_KT_OUTER (the top part: the entry's frames, fixed places) are in
 * dn_records.h, with struct dn_kt_key and the walks sent, dn_kt_rec */

struct dn_kt {
	s32 kstack;
	u16 n; /* slots in use */
	u16 confirmed;
	u32 outer; /* bit i: slot i is in the top part */
	u16 span;  /* words from sp up that hold the other slots */
	u16 pad[3];
	u16 word[DN_KT_SLOTS]; /* outer: words from top - DN_KT_OUTER; else: from sp */
	u64 val[DN_KT_SLOTS];
};

BPF_HASH(dn_kt, struct dn_kt_key, struct dn_kt, 4096);
BPF_RINGBUF_OUTPUT(dn_kt_learn, 128);
/* [0] reuses, [1] walks, [2] reuses a walk disagreed with (verify mode),
 * [3] confirmations failed */
BPF_PERCPU_ARRAY(dn_kt_stats, u64, 4);

static __always_inline void dn_kt_count(int i)
{
	u64 *c = dn_kt_stats.lookup(&i);
	if (c)
		(*c)++;
}

/* The stack words a template is checked against: read in two copies
 * (the part from sp up to its last slot there, and the top part), not
 * one read per slot. */
struct dn_kt_copy {
	u64 inner[DN_KT_INNER / 8];
	u64 outer[DN_KT_OUTER / 8];
};
BPF_PERCPU_ARRAY(dn_kt_copy, struct dn_kt_copy, 1);

/* Do the template's slots hold its values now? Written out slot by slot:
 * each access is at a constant offset into the template. A loop lets
 * clang walk the arrays with moving pointers that 6.1's verifier cannot
 * bound by the loop counter (it then rejects the program), and clang does
 * not always honour "#pragma unroll" here. */
#define DN_KT_SLOT(i)                                                                            \
	if ((i) < n) {                                                                           \
		u64 v = (t->outer & (1U << (i))) ? c->outer[t->word[i] & (DN_KT_OUTER / 8 - 1)]  \
		                                 : c->inner[t->word[i] & (DN_KT_INNER / 8 - 1)]; \
		if (v != t->val[i])                                                              \
			return 0;                                                                \
	}
#define DN_KT_SLOT4(i) DN_KT_SLOT(i) DN_KT_SLOT(i + 1) DN_KT_SLOT(i + 2) DN_KT_SLOT(i + 3)

/* clang-format off */
static __always_inline int dn_kt_match(struct dn_kt *t, u64 sp, u64 top)
{
	int zero = 0;
	struct dn_kt_copy *c = dn_kt_copy.lookup(&zero);
	if (!c)
		return 0;
	u32 n = t->n;
	u32 bytes = 8 * (u32)t->span;
	if (bytes > DN_KT_INNER)
		return 0;
	if (bytes && bpf_probe_read_kernel(c->inner, bytes, (void *)sp) < 0)
		return 0;
	if (t->outer && bpf_probe_read_kernel(c->outer, DN_KT_OUTER, (void *)(top - DN_KT_OUTER)) < 0)
		return 0;
	DN_KT_SLOT4(0) DN_KT_SLOT4(4) DN_KT_SLOT4(8) DN_KT_SLOT4(12)
	DN_KT_SLOT4(16) DN_KT_SLOT4(20) DN_KT_SLOT4(24) DN_KT_SLOT4(28)
	return 1;
}
/* clang-format on */

/* The stack pointer the program's kernel stack templates are kept
 * relative to: the raw tracepoint's arguments (an array on the stack of
 * the kernel function that called this program: the program's own frame
 * may be on a stack of its own), made a number through a map (the
 * verifier allows no arithmetic on it); or the tracepoint's saved
 * registers' sp. */
static __always_inline u64 dn_kt_anchor(void *ctx)
{
	u64 sp = 0;
#ifdef DN_SWITCH_RAW
	int zero = 0;
	struct dn_regs_scratch *sc = dn_regs_scratch.lookup(&zero);
	if (sc) {
		*(void *volatile *)&sc->ptr = ctx;
		sp = *(volatile u64 *)&sc->ptr;
	}
#else
	u64 regs = 0;
	bpf_probe_read_kernel(&regs, 8, ctx);
	bpf_probe_read_kernel(&sp, 8, (void *)(regs + DN_PT_REGS_SP));
#endif
	return sp;
}

/* A template matched (t, key): reuse its id once a walk confirmed it;
 * the first use walks once to confirm it, or drops it. */
static __always_inline s32 dn_kt_reuse(void *ctx, struct dn_kt *t, struct dn_kt_key *key)
{
	if (t->confirmed) {
		dn_kt_count(0);
#ifdef DN_KSTACK_VERIFY
		s32 walked = dn_offcpu_stacks.get_stackid(ctx, DN_KSTACK_FLAGS);
		if (walked != t->kstack)
			dn_kt_count(2);
#endif
		return t->kstack;
	}
	s32 walked = dn_offcpu_stacks.get_stackid(ctx, DN_KSTACK_FLAGS);
	dn_kt_count(1);
	if (walked == t->kstack) {
		t->confirmed = 1;
	} else {
		dn_kt_count(3);
		dn_kt.delete(key);
	}
	return walked;
}

/* A walked stack (id), with copies of the stack memory it was found in,
 * to user space to learn a template from (as way `way` of key). */
static __always_inline void dn_kt_send(struct dn_kt_key *key, u16 way, s32 id, u64 sp, u64 top)
{
	struct dn_kt_rec *r = dn_kt_learn.ringbuf_reserve(sizeof(struct dn_kt_rec));
	if (!r)
		return;
	r->key = *key;
	r->key.way = way;
	r->kstack = id;
	r->sp = sp;
	r->top = top;
	u64 len = top - sp;
	if (len > DN_KT_INNER)
		len = DN_KT_INNER;
	r->ok = bpf_probe_read_kernel(r->inner, len, (void *)sp) == 0 &&
	        bpf_probe_read_kernel(r->outer, DN_KT_OUTER, (void *)(top - DN_KT_OUTER)) == 0;
	dn_kt_learn.ringbuf_submit(r, 0);
}

/* The kernel stack id of the current task at this sched_switch, reusing
 * a confirmed template when its slots still hold the same addresses,
 * else walking (and sending what a template needs). */
static __always_inline s32 dn_kstack_id(void *ctx, s32 syscall, u32 state)
{
	/* the top of the stack: the user registers saved at kernel entry sit
	 * there */
	u64 uregs = dn_user_regs();
	if (!uregs)
		return dn_offcpu_stacks.get_stackid(ctx, DN_KSTACK_FLAGS);
	u64 top = uregs + DN_PT_REGS_SIZE;
	u64 sp = dn_kt_anchor(ctx), uip = 0;
	bpf_probe_read_kernel(&uip, 8, (void *)(top - DN_PT_REGS_SIZE + DN_PT_REGS_IP));

	/* two templates (ways) per key: a call that blocks in two places in
	 * turn keeps both */
	struct dn_kt_key key = {};
	key.syscall = syscall;
	key.state = state;
	key.uip = uip;
	struct dn_kt *t = dn_kt.lookup(&key);
	/* where a new template goes: way 0 if free, else way 1 unless way 1
	 * is confirmed and way 0 is not */
	u16 learn_way = 0;
	if (t && !(sp && dn_kt_match(t, sp, top))) {
		u16 c0 = t->confirmed;
		key.way = 1;
		t = dn_kt.lookup(&key);
		learn_way = !(t && t->confirmed && !c0);
	}
	if (t && sp && dn_kt_match(t, sp, top))
		return dn_kt_reuse(ctx, t, &key);
	s32 id = dn_offcpu_stacks.get_stackid(ctx, DN_KSTACK_FLAGS);
	dn_kt_count(1);
	if (id >= 0 && sp && sp < top)
		dn_kt_send(&key, learn_way, id, sp, top);
	return id;
}
#endif

static __always_inline void dn_offcpu_thread_start(u32 tid, u32 tgid)
{
	struct dn_offcpu_thread z = {};
	z.tgid = tgid;
	z.born = bpf_ktime_get_ns();
	dn_offcpu_threads.update(&tid, &z);
}

/* A block of thread tid (its entry th) ended after d ns: count it. */
static __always_inline void dn_offcpu_end_block(struct dn_offcpu_thread *th, u32 tid, u64 d)
{
	/* the whole block's length, from before tracing began */
	u64 whole = d + th->before;
	th->start = 0;
	int zero = 0;
	u64 *seen = dn_offcpu_seen.lookup(&zero);
	if (seen)
		(*seen)++;
	if (th->state)
		th->offcpu_ns += d;
	else
		th->runq_ns += d;
	u32 zero_key = 0;
	struct dn_offcpu_cfg *cfg = dn_offcpu_cfg.lookup(&zero_key);
	if (cfg && whole >= cfg->min_ns && (!cfg->max_ns || whole <= cfg->max_ns)) {
		struct dn_offcpu_key k = {};
		k.tgid = th->tgid;
		k.tid = tid;
		k.ustack = th->ustack;
		k.kstack = th->kstack;
		k.state = th->state;
		k.syscall = th->syscall;
		k.pystack = th->pystack;
#pragma unroll
		for (int i = 0; i < DN_LEAF_FRAMES; i++)
			k.leaf[i] = th->leaf[i];
		struct dn_offcpu_val zero = {}, *v = dn_offcpu.lookup_or_try_init(&k, &zero);
		if (v) {
			__sync_fetch_and_add(&v->total_ns, d);
			__sync_fetch_and_add(&v->count, 1);
			if (whole > v->max_ns)
				v->max_ns = whole;
			if (!v->min_ns || whole < v->min_ns)
				v->min_ns = whole;
		} else {
			int one = 1;
			u64 *lost = dn_offcpu_seen.lookup(&one);
			if (lost)
				(*lost)++;
		}
	}
}

/* The current thread (tid, its entry th) is running with its last block
 * open: the kernel did not run the program for the switch that ended it.
 * It has run since, without a switch: its CPU time now (runtime) less at
 * the switch-out that began the block says when it came back. */
static __always_inline void dn_offcpu_recover(struct dn_offcpu_thread *th, u32 tid, u64 now, u64 runtime)
{
	u64 ran = runtime - th->runtime;
	int why = 2;
	if (runtime && th->runtime && runtime >= th->runtime && now - ran > th->start) {
		dn_offcpu_end_block(th, tid, now - ran - th->start);
		why = 3;
	}
	th->start = 0;
	u64 *n = dn_offcpu_seen.lookup(&why);
	if (n)
		(*n)++;
}

static __always_inline void dn_offcpu_thread_exit(u32 tid)
{
	struct dn_offcpu_thread *th = dn_offcpu_threads.lookup(&tid);
	if (!th)
		return;
	u64 now = bpf_ktime_get_ns();
	th->died = now;
	/* its CPU time: up to date at its last tick or switch (its final
	 * switch is not seen: the thread has left the watched set by then) */
	u64 runtime = dn_current_runtime();
	/* exiting, so running: a block still open ended unseen */
	if (th->start)
		dn_offcpu_recover(th, tid, now, runtime);
	th->runtime = runtime;
}

/* The stacks of the current thread (tgid), which blocks now in state st:
 * its syscall, kernel and user stacks, and the frames the user stack walk
 * lost, into th. */
static __always_inline void dn_offcpu_stacks_of(void *ctx, struct dn_offcpu_thread *th, u32 tgid, u32 st)
{
	th->syscall = dn_insys_nr();
#ifdef DN_NO_KSTACK
	th->kstack = -1;
#else
#ifdef DN_KSTACK_REUSE
	th->kstack = dn_kstack_id(ctx, th->syscall, st);
#else
	th->kstack = dn_offcpu_stacks.get_stackid(ctx, DN_KSTACK_FLAGS);
#endif
	if (th->kstack < 0)
		dn_offcpu_missed_inc(1, th->kstack);
#endif
#ifdef DN_NO_USTACK
	th->ustack = -1;
#else
	if (dn_current_kthread()) {
		th->ustack = DN_STACK_NONE;
		return;
	}
#if defined(DN_DWARF_UNWIND)
	/* walked from the unwind tables once every hook has run (unwind.c):
	 * dn_uw_deliver gives the id */
	__builtin_memset(th->leaf, 0, sizeof(th->leaf));
	s32 uw = dn_uw_begin(tgid, (u32)bpf_get_current_pid_tgid());
	th->ustack = uw == 0 ? DN_UW_PENDING : uw;
#ifdef DN_PYTHON
	/* its Python frames, read before the native walk (python.c) */
	th->pystack = dn_py_begin(tgid, (u32)bpf_get_current_pid_tgid()) ? DN_UW_PENDING : 0;
#endif
#elif defined(DN_USTACK_REUSE)
	th->ustack = dn_ustack_id(ctx, tgid, th->leaf);
#else
	th->ustack = dn_offcpu_stacks.get_stackid(ctx, BPF_F_USER_STACK);
#ifdef DN_LEAF_UNWIND
	__builtin_memset(th->leaf, 0, sizeof(th->leaf));
	u64 leaf_at[DN_LEAF_FRAMES] = {};
	if (th->ustack >= 0)
		dn_leaf_count(dn_leaf_unwind(tgid, th->leaf, leaf_at));
#endif
#endif
	if (th->ustack < 0 && th->ustack != DN_UW_PENDING)
		dn_offcpu_missed_inc(0, th->ustack);
#endif
}

#ifdef DN_PYTHON
/* The Python frames of thread tid's block: their stack's id (0: none;
 * < 0: not stored). */
static __always_inline void dn_py_deliver(u32 tid, s32 id)
{
	struct dn_offcpu_thread *th = dn_offcpu_threads.lookup(&tid);
	if (th && th->pystack == DN_UW_PENDING)
		th->pystack = id;
}
#endif

#ifdef DN_DWARF_UNWIND
/* The walk of thread tid's user stack (begun at its switch-out) is over:
 * its id (< 0: not stored, why as the stack map's errors). */
static __always_inline void dn_uw_deliver(u32 tid, s32 id)
{
	struct dn_offcpu_thread *th = dn_offcpu_threads.lookup(&tid);
	if (!th || th->ustack != DN_UW_PENDING)
		return;
	th->ustack = id;
	if (id < 0)
		dn_offcpu_missed_inc(0, id);
}
#endif

/* The thread switching out (prev, of tgid: the current task) in state
 * prev_state begins a block, when the run's config keeps it. */
static __always_inline void dn_offcpu_switch_out(void *ctx, struct dn_offcpu_cfg *cfg, u32 prev, u32 tgid,
                                                 long prev_state, u64 now)
{
	struct dn_offcpu_thread *th = dn_offcpu_threads.lookup(&prev);
	if (!th) {
		/* running since before tracing began */
		struct dn_offcpu_thread z = {};
		z.tgid = tgid;
		dn_offcpu_threads.update(&prev, &z);
		th = dn_offcpu_threads.lookup(&prev);
		if (!th)
			return;
	}
	bpf_get_current_comm(th->comm, sizeof(th->comm));
	/* exact here: the scheduler has just accounted it */
	u64 runtime = dn_current_runtime();
	/* switched out again with its last block open */
	if (th->start)
		dn_offcpu_recover(th, prev, now, runtime);
	th->runtime = runtime;
	u32 st = prev_state & DN_TASK_STATE_MASK;
	u64 bitpos = st ? (u64)st << 1 : 1;
	th->start = 0;
	if (cfg->states && !(cfg->states & bitpos))
		return;
	th->start = now;
	th->before = 0;
	th->state = st;
	dn_offcpu_stacks_of(ctx, th, tgid, st);
}

static __always_inline void dn_offcpu_on_switch(void *ctx, u32 prev, long prev_state, u32 next)
{
	u64 now = bpf_ktime_get_ns();
	u32 tgid = bpf_get_current_pid_tgid() >> 32; /* current is prev */

	u32 zero = 0;
	struct dn_offcpu_cfg *cfg = dn_offcpu_cfg.lookup(&zero);
	if (!cfg)
		return;
	/* only user threads, or only kernel threads */
	int kept = cfg->threads == DN_OFFCPU_ALL_THREADS ||
	           (cfg->threads == DN_OFFCPU_USER_THREADS) == !dn_current_kthread();
	if (kept && dn_wanted(tgid, prev))
		dn_offcpu_switch_out(ctx, cfg, prev, tgid, prev_state, now);

	struct dn_offcpu_thread *nt = dn_offcpu_threads.lookup(&next);
	if (!nt || !nt->start)
		return;
	dn_offcpu_end_block(nt, next, now - nt->start);
}
