/*
 * python.c - the Python frames of a thread that blocks, read in the
 * kernel at its switch-out (CPython 3.11). Needs unwind.c (it runs in the
 * same tail-call chain, before the native walk) and offcpu.c, which
 * defines dn_py_deliver(tid, id).
 *
 * User space (lib/denet/stacks/python.lua) finds the interpreters among
 * the processes it loads mappings of, checks the layout against what the
 * binary exports, and puts each in dn_py_procs: the address of
 * _PyRuntime and of PyCode_Type. The structure offsets are the 3.11 ones,
 * compiled in (-DDN_PY_*, from python.lua's layout table).
 *
 * A walk: the thread's PyThreadState (cached per thread, checked by its
 * native_thread_id; else found by walking the runtime's interpreters and
 * their threads), its _PyCFrame's current frame, then the chain of
 * _PyInterpreterFrame by `previous`: for each its code object (whose type
 * must be PyCode_Type, else the walk ends, truncated), the instruction
 * it is at, and whether it is an entry frame (the first frame a
 * _PyEval_EvalFrameDefault C frame ran). The frames go into dn_py_stacks
 * (id: a hash of them); a stack stored for the first time is announced in
 * dn_py_new, so user space reads its code objects while they live.
 * Everything here is compiled with -DDN_PYTHON only.
 */
#ifdef DN_PYTHON
#ifndef DN_PY_STACKS
#define DN_PY_STACKS 16384
#endif
/* interpreters and threads a search for a thread state visits */
#define DN_PY_SEARCH 256

/* flags of a Python stack */
#define DN_PY_F_FAULT 1 /* a read failed, or a frame's code was not a code object */
#define DN_PY_F_DEEP 2  /* DN_PY_FRAMES reached */

BPF_F_TABLE("hash", u32, struct dn_py_proc, dn_py_procs, 4096, BPF_F_NO_PREALLOC);
/* tid -> its PyThreadState */
BPF_F_TABLE("lru_hash", u32, u64, dn_py_tstates, 16384, 0);
BPF_F_TABLE("hash", s32, struct dn_py_stack, dn_py_stacks, DN_PY_STACKS, BPF_F_NO_PREALLOC);
BPF_RINGBUF_OUTPUT(dn_py_new, 8);

struct dn_py_state {
	u32 tid, active;
	struct dn_py_stack st;
};
BPF_PERCPU_ARRAY(dn_py_state, struct dn_py_state, 1);
/* [0] walks, [1] thread states not found (no Python frames), [2] stacks
 * truncated, [3] stacks not stored (map full, hash collision), [4] frames
 * read, [5] announcements lost (the ring was full) */
BPF_PERCPU_ARRAY(dn_py_stats, u64, 6);

static __always_inline void dn_py_count(int i, u64 by)
{
	u64 *c = dn_py_stats.lookup(&i);
	if (c)
		*c += by;
}

static __always_inline void dn_py_deliver(u32 tid, s32 id);

/* At a switch-out of thread tid of tgid: a walk is due (after every
 * hook) when tgid is a Python process. Returns 1 when it is. */
static __always_inline int dn_py_begin(u32 tgid, u32 tid)
{
	int zero = 0;
	struct dn_py_state *s = dn_py_state.lookup(&zero);
	if (!s || !dn_py_procs.lookup(&tgid))
		return 0;
	s->tid = tid;
	s->st.tgid = tgid;
	s->active = 1;
	return 1;
}

/* The PyThreadState of thread tid in process p, or 0. */
static __always_inline u64 dn_py_tstate(struct dn_py_proc *p, u32 tid)
{
	u64 ts = 0, ntid = 0, interp = 0;
	u64 *cached = dn_py_tstates.lookup(&tid);
	if (cached) {
		ts = *cached;
		if (bpf_probe_read_user(&ntid, 8, (void *)(ts + DN_PY_TS_TID)) == 0 && ntid == tid)
			return ts;
	}
	if (bpf_probe_read_user(&interp, 8, (void *)(p->runtime + DN_PY_RT_INTERPS)) < 0 || !interp)
		return 0;
	ts = 0;
	bpf_probe_read_user(&ts, 8, (void *)(interp + DN_PY_IS_THREADS));
	for (int i = 0; i < DN_PY_SEARCH; i++) {
		if (!ts) {
			/* the next interpreter's threads */
			if (bpf_probe_read_user(&interp, 8, (void *)(interp + DN_PY_IS_NEXT)) < 0 || !interp)
				return 0;
			bpf_probe_read_user(&ts, 8, (void *)(interp + DN_PY_IS_THREADS));
			continue;
		}
		if (bpf_probe_read_user(&ntid, 8, (void *)(ts + DN_PY_TS_TID)) < 0)
			return 0;
		if (ntid == tid) {
			dn_py_tstates.update(&tid, &ts);
			return ts;
		}
		if (bpf_probe_read_user(&ts, 8, (void *)(ts + DN_PY_TS_NEXT)) < 0)
			return 0;
	}
	return 0;
}

/* Store the stack walked, announce it when new; its id (< 0: not stored). */
static __always_inline s32 dn_py_store(struct dn_py_state *s)
{
	u64 h = s->st.hash ^ s->st.flags;
	s->st.hash = h;
	s32 id = (s32)((u32)(h ^ (h >> 32)) & 0x3fffffff);
	if (!id)
		id = 1;
	struct dn_py_stack *have = dn_py_stacks.lookup(&id);
	if (have) {
		if (have->hash == h && have->tgid == s->st.tgid)
			return id;
		dn_py_count(3, 1);
		return -17;
	}
	if (dn_py_stacks.update(&id, &s->st) != 0) {
		dn_py_count(3, 1);
		return -12;
	}
	struct dn_py_new_rec *r = dn_py_new.ringbuf_reserve(sizeof(*r));
	if (r) {
		r->tgid = s->st.tgid;
		r->id = id;
		dn_py_new.ringbuf_submit(r, 0);
	} else {
		dn_py_count(5, 1);
	}
	return id;
}

/* The walk: the current thread's Python frames, innermost first. */
static __always_inline s32 dn_py_walk_frames(struct dn_py_state *s)
{
	struct dn_py_proc *p = dn_py_procs.lookup(&s->st.tgid);
	if (!p)
		return 0;
	dn_py_count(0, 1);
	u64 ts = dn_py_tstate(p, s->tid);
	u64 cf = 0, f = 0;
	if (!ts || bpf_probe_read_user(&cf, 8, (void *)(ts + DN_PY_TS_CFRAME)) < 0 || !cf ||
	    bpf_probe_read_user(&f, 8, (void *)(cf + DN_PY_CF_FRAME)) < 0 || !f) {
		/* not a Python thread, or not running Python code */
		dn_py_count(1, 1);
		return 0;
	}
	s->st.n = 0;
	s->st.flags = 0;
	s->st.hash = 0xcbf29ce484222325ULL;
	u8 fr[DN_PY_F_SIZE], co[DN_PY_CO_SIZE];
	for (int i = 0; i < DN_PY_FRAMES; i++) {
		if (!f)
			break;
		if (bpf_probe_read_user(fr, sizeof(fr), (void *)f) < 0) {
			s->st.flags |= DN_PY_F_FAULT;
			break;
		}
		u64 code = *(u64 *)(fr + DN_PY_F_CODE);
		if (bpf_probe_read_user(co, sizeof(co), (void *)code) < 0 ||
		    *(u64 *)(co + DN_PY_CO_TYPE) != p->code_type) {
			s->st.flags |= DN_PY_F_FAULT;
			break;
		}
		u64 at = *(u64 *)(fr + DN_PY_F_INSTR), first = code + DN_PY_CO_CODE;
		/* (a frame not begun is at the instruction before the first) */
		u32 instr = at >= first ? (u32)((at - first) / 2) & 0x7fffffff : 0;
		if (fr[DN_PY_F_ENTRY])
			instr |= DN_PY_ENTRY;
		struct dn_py_frame *o = &s->st.f[i & (DN_PY_FRAMES - 1)];
		o->code = code;
		o->instr = instr;
		o->first = *(s32 *)(co + DN_PY_CO_FIRST);
		s->st.hash = (s->st.hash ^ code ^ ((u64)instr << 32)) * 0x100000001b3ULL;
		s->st.n = i + 1;
		f = *(u64 *)(fr + DN_PY_F_PREVIOUS);
	}
	if (f && !(s->st.flags & DN_PY_F_FAULT))
		s->st.flags |= DN_PY_F_DEEP;
	if (s->st.flags)
		dn_py_count(2, 1);
	dn_py_count(4, s->st.n);
	return s->st.n ? dn_py_store(s) : 0;
}

/* The walk's program, first in the tail-call chain (dn_uw_progs[1]); the
 * native walk follows. */
int dn_py_walk(void *ctx)
{
	int zero = 0;
	struct dn_py_state *s = dn_py_state.lookup(&zero);
	if (s && s->active) {
		s->active = 0;
		dn_py_deliver(s->tid, dn_py_walk_frames(s));
	}
	dn_uw_progs.call(ctx, 0);
	/* no native walk due, or its program is not loaded */
	dn_uw_abandon();
	return 0;
}

/* tree.c's hooks (through unwind.c's): a process forked runs the same
 * interpreter at the same addresses; one that exec'd runs another
 * program. */
static __always_inline void dn_py_on_fork(u32 parent, u32 child)
{
	struct dn_py_proc *p = dn_py_procs.lookup(&parent);
	if (p) {
		struct dn_py_proc c = *p;
		dn_py_procs.update(&child, &c);
	}
}

static __always_inline void dn_py_on_exec(u32 tgid)
{
	dn_py_procs.delete(&tgid);
}

/* From dn_uw_run: the Python walk, when one is due, then the native one. */
static __always_inline void dn_py_run(void *ctx)
{
	int zero = 0;
	struct dn_py_state *s = dn_py_state.lookup(&zero);
	if (!s || !s->active)
		return;
	dn_uw_progs.call(ctx, 1);
	/* not loaded */
	s->active = 0;
	dn_py_deliver(s->tid, 0);
}
#endif
