/*
 * unwind.c - user stacks walked in the kernel from unwind tables, for
 * binaries without frame pointers (most of Debian). Needs tree.c; the
 * feature that asks for a walk (offcpu.c) is composed after it and
 * defines dn_uw_deliver(tid, id), which is given the stack's id.
 *
 * User space (lib/denet/stacks/dwarf.lua) turns each mapped file's
 * .eh_frame into rows (host/dn_unwind.c) and loads them here:
 *   dn_uw_pages: (file, 1 KiB page of its addresses) -> the rows that
 *     hold in that page, the one in effect at its start first; a page with
 *     more rows than a value holds is split into four 256-byte quarters
 *     (keys with DN_UW_QUARTER set);
 *   dn_uw_regions: (tgid, 64 KiB region) -> the executable mappings in it
 *     (start, end, the bias from address to file address, the file's
 *     table; file 0: none), and dn_uw_procs: the processes loaded.
 * A walk begins at a switch-out (dn_uw_begin: the registers saved at
 * kernel entry into a per-CPU state) and goes on in dn_uw_walk, which the
 * sched_switch probe tail-calls once every hook has run: DN_UW_STEP frames
 * per program, chained by tail calls, up to DN_UW_FRAMES. Each frame: the
 * mapping (its region), the page, the row (a scan of the page), then the
 * rule: CFA from rsp or rbp, the return address at CFA - 8, rbp from where
 * it was saved. A signal frame's caller is read from the rt_sigframe's
 * ucontext. The frames go into dn_uw_stacks (id: a hash of the frames).
 *
 * A walk that meets an address in no known mapping (a process whose
 * mappings user space has not loaded yet, a library mapped since) copies
 * the stack (DN_UW_COPY bytes from sp) to user space instead (dn_uw_miss),
 * which unwinds it there with the same tables and loads the process's
 * mappings for the next blocks: right from the first block.
 * Everything here is compiled with -DDN_DWARF_UNWIND only.
 */
#ifdef DN_DWARF_UNWIND
#ifndef DN_UW_STACKS
#define DN_UW_STACKS 16384
#endif
#ifndef DN_UW_PAGES
#define DN_UW_PAGES 1048576 /* (~264 bytes each: the 256 MiB cap) */
#endif
#ifndef DN_UW_STEP
#define DN_UW_STEP 8
#endif
/* the id of a stack that a walk could not begin (never stored) */
#define DN_UW_FAILED (-14)

/* struct dn_uw_page_key, dn_uw_prow, dn_uw_page: dn_records.h */
struct dn_uw_map {
	u64 start, end, bias;
	u32 file, pad;
};
/* (tgid, 64 KiB region of its addresses) -> the executable mappings in it */
struct dn_uw_region_key {
	u32 tgid, region;
};
struct dn_uw_region {
	struct dn_uw_map m[DN_UW_REGION_MAPS];
};

/* flags of a walked stack */
#define DN_UW_F_TRUNC 1   /* a frame without a rule the walk can apply */
#define DN_UW_F_NOTABLE 2 /* a frame in a file whose table is not loaded */
#define DN_UW_F_DEEP 4    /* DN_UW_FRAMES reached */
#define DN_UW_F_FAULT 8   /* a read of the stack failed */

struct dn_uw_stack {
	u64 hash;
	u32 n, flags;
	u32 execs; /* the process's execs (dn_uw_execs) when it was walked: its image */
	u32 pad;
	u64 ip[DN_UW_FRAMES + 1];
};

/* the walk in progress on this CPU */
struct dn_uw_state {
	u64 ip, sp, bp;
	u64 sp0, ip0, bp0; /* at kernel entry (for a copy) */
	u32 tgid, tid;
	u32 active;    /* a walk was begun and not finished */
	u32 is_return; /* ip is a return address (look up ip - 1) */
	u32 calls;     /* tail calls so far */
	u32 bp_lost;
	u32 gen;               /* the process's mappings' generation (dn_uw_procs) */
	u32 map_tgid;          /* whose regions hold its mappings (itself, or its parent) */
	u32 nreads;            /* words the walk read (kept: the first DN_UWT_READS) */
	s32 expect;            /* verify mode: the id a template gave (0: none) */
	struct dn_uwt_key key; /* the registers, as a template's key */
	u64 rd_addr[DN_UWT_READS];
	u64 rd_val[DN_UWT_READS];
	struct dn_uw_stack st;
};

#ifdef DN_USTACK_REUSE
/*
 * Stack reuse. A walk is a function of the registers saved at kernel
 * entry (ip, sp, bp), of the tables (which change only when the process's
 * mappings are loaded again: their generation) and of the words it read.
 * A template keeps, for (tgid, ip, sp, bp), the stack id, the generation
 * and every word read (at most DN_UWT_READS); when the same words are
 * there again, the walk would give the same stack, and its id is reused
 * without a walk. Two ways per key: a call that blocks from two callers
 * in turn keeps both. -DDN_USTACK_VERIFY walks on every reuse too and
 * counts disagreements.
 */
struct dn_uwt {
	s32 id;
	u32 n; /* words read */
	u32 gen;
	u32 pad;
	u64 used; /* when last reused or made */
	u64 addr[DN_UWT_READS];
	u64 val[DN_UWT_READS];
};
BPF_F_TABLE("lru_hash", struct dn_uwt_key, struct dn_uwt, dn_uwt, 8192, 0);
#endif

BPF_F_TABLE("hash", struct dn_uw_page_key, struct dn_uw_page, dn_uw_pages, DN_UW_PAGES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct dn_uw_region_key, struct dn_uw_region, dn_uw_regions, 1048576, BPF_F_NO_PREALLOC);
/* tgid -> its mappings are loaded (an address in none is not mapped):
 * their generation, and for a process forked since (before user space
 * loaded its own), the process whose regions it shares */
struct dn_uw_proc {
	u32 gen;
	u32 alias;
	u32 execs; /* dn_uw_execs when its mappings were read */
	u32 pad;
};
BPF_F_TABLE("hash", u32, struct dn_uw_proc, dn_uw_procs, 65536, BPF_F_NO_PREALLOC);
/* tgid -> how many times it exec'd: user space reads it before and after
 * it reads a process's mappings, and drops what it loaded when an exec
 * came in between (the mappings read may be of the image before) */
BPF_F_TABLE("lru_hash", u32, u32, dn_uw_execs, 65536, 0);
BPF_F_TABLE("hash", u32, struct dn_uw_stack, dn_uw_stacks, DN_UW_STACKS, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(dn_uw_state, struct dn_uw_state, 1);
#ifdef DN_USTACK_REUSE
BPF_PERCPU_ARRAY(dn_uwt_scratch, struct dn_uwt, 1);
#endif
/* [0] the walk (dn_uw_walk); [1] the Python walk before it (python.c) */
BPF_PROG_ARRAY(dn_uw_progs, 2);
BPF_RINGBUF_OUTPUT(dn_uw_miss, 512);
/* [0] walks, [1] whole (to the entry point), [2] truncated, [3] copied
 * to user space, [4] copies lost (the ring was full), [5] stacks not
 * stored (the map full or a hash collision), [6] frames walked, [7]
 * stacks reused, [8] reuses a walk disagreed with (verify mode) */
BPF_PERCPU_ARRAY(dn_uw_stats, u64, 9);
/* copies of each process's stacks to user space: a bucket of
 * DN_UW_COPY_BURST, one more every DN_UW_COPY_GAP ns */
struct dn_uw_bucket {
	u64 last, tokens;
};
BPF_F_TABLE("lru_hash", u32, struct dn_uw_bucket, dn_uw_asked, 4096, 0);
#define DN_UW_COPY_GAP 2000000ULL
#define DN_UW_COPY_BURST 16
/* a sequence for the ids of copied stacks */
BPF_PERCPU_ARRAY(dn_uw_seq, u32, 1);

static __always_inline void dn_uw_count(int i, u64 by)
{
	u64 *c = dn_uw_stats.lookup(&i);
	if (c)
		*c += by;
}

static __always_inline void dn_uw_deliver(u32 tid, s32 id);

#ifdef DN_USTACK_REUSE
/* Do template t's words hold its values now? */
static __always_inline int dn_uwt_match(struct dn_uwt *t, u32 gen)
{
	if (t->gen != gen || t->n > DN_UWT_READS)
		return 0;
	u32 n = t->n;
#pragma unroll
	for (int i = 0; i < DN_UWT_READS; i++) {
		u64 v = 0;
		if (i < n && (bpf_probe_read_user(&v, 8, (void *)t->addr[i]) < 0 || v != t->val[i]))
			return 0;
	}
	return 1;
}

/* The id of a template of s->key whose words are all there still (its
 * use time updated), or 0. */
static __always_inline s32 dn_uwt_find(struct dn_uw_state *s)
{
#pragma unroll
	for (int w = 0; w < 2; w++) {
		s->key.way = w;
		struct dn_uwt *t = dn_uwt.lookup(&s->key);
		if (t && dn_uwt_match(t, s->gen)) {
			t->used = bpf_ktime_get_ns();
			return t->id;
		}
	}
	return 0;
}

/* Keep what the walk that gave id read as a template of s->key: in a
 * free way, else in the one used least recently. */
static __always_inline void dn_uwt_keep(struct dn_uw_state *s, s32 id)
{
	if (id < 0 || s->nreads > DN_UWT_READS || (s->st.flags & ~DN_UW_F_TRUNC))
		return;
	s->key.way = 0;
	struct dn_uwt *t0 = dn_uwt.lookup(&s->key);
	u64 used0 = t0 ? t0->used : 0;
	s->key.way = 1;
	struct dn_uwt *t1 = dn_uwt.lookup(&s->key);
	if (t1 && (!t0 || used0 <= t1->used))
		s->key.way = 0;
	int zero = 0;
	struct dn_uwt *t = dn_uwt_scratch.lookup(&zero);
	if (!t)
		return;
	t->id = id;
	t->n = s->nreads;
	t->gen = s->gen;
	t->used = bpf_ktime_get_ns();
#pragma unroll
	for (int i = 0; i < DN_UWT_READS; i++) {
		t->addr[i] = s->rd_addr[i];
		t->val[i] = s->rd_val[i];
	}
	dn_uwt.update(&s->key, t);
}
#endif

/* Begin a walk of the current task's user stack (a thread of tgid, tid):
 * the registers it saved at kernel entry. Returns 0 (its id comes once
 * the walk ends), a reused stack's id, or DN_UW_FAILED. */
static __always_inline s32 dn_uw_begin(u32 tgid, u32 tid)
{
	int zero = 0;
	struct dn_uw_state *s = dn_uw_state.lookup(&zero);
	u64 regs = dn_user_regs();
	if (!s || !regs)
		return DN_UW_FAILED;
	bpf_probe_read_kernel(&s->ip, 8, (void *)(regs + DN_PT_REGS_IP));
	bpf_probe_read_kernel(&s->sp, 8, (void *)(regs + DN_PT_REGS_SP));
	bpf_probe_read_kernel(&s->bp, 8, (void *)(regs + DN_PT_REGS_BP));
	s->ip0 = s->ip;
	s->sp0 = s->sp;
	s->bp0 = s->bp;
	s->tgid = tgid;
	s->tid = tid;
	s->is_return = 0;
	s->calls = 0;
	s->bp_lost = 0;
	s->nreads = 0;
	s->expect = 0;
	s->st.n = 0;
	s->st.flags = 0;
	struct dn_uw_proc *gen = dn_uw_procs.lookup(&tgid);
	/* which image of the process the stack is of: its names are those of
	 * the mappings read for that image (a stack of the same addresses
	 * after an exec is another stack) */
	u32 *execs = gen ? NULL : dn_uw_execs.lookup(&tgid);
	s->st.execs = gen ? gen->execs : (execs ? *execs : 0);
	s->st.hash = 0xcbf29ce484222325ULL ^ s->st.execs;
	s->gen = gen ? gen->gen : 0;
	s->map_tgid = gen && gen->alias ? gen->alias : tgid;
#ifdef DN_USTACK_REUSE
	s->key.tgid = tgid;
	s->key.way = 0;
	s->key.ip = s->ip;
	s->key.sp = s->sp;
	s->key.bp = s->bp;
	s32 id = gen ? dn_uwt_find(s) : 0;
	if (id > 0) {
		dn_uw_count(7, 1);
#ifndef DN_USTACK_VERIFY
		s->active = 0;
		return id;
#else
		s->expect = id;
#endif
	}
#endif
	s->active = 1;
	return 0;
}

/*
 * Searches without an index the verifier must track: a variable index
 * into a map value makes it keep each value apart (no pruning), and a
 * binary search then costs it 2^depth paths per frame. A fixed scan of a
 * few slots copies what matches into plain scalars instead.
 */

/* Where ip is in tgid's mappings: its file (0: none), and the bias into
 * *bias; -1 when ip is in no mapping loaded. */
static __always_inline s64 dn_uw_find_map(u32 tgid, u64 ip, u64 *bias)
{
	struct dn_uw_region_key k = { tgid, (u32)(ip >> 16) };
	struct dn_uw_region *g = dn_uw_regions.lookup(&k);
	s64 file = -1;
	if (!g)
		return -1;
#pragma unroll
	for (int i = 0; i < DN_UW_REGION_MAPS; i++) {
		if (g->m[i].start <= ip && ip < g->m[i].end) {
			file = g->m[i].file;
			*bias = g->m[i].bias;
		}
	}
	return file;
}

/* The rule for file address pc of file: its kind (DN_UW_STOP when there
 * is none), cfa and rbp. */
static __always_inline u32 dn_uw_find_row(u32 file, u64 pc, s32 *cfa, s8 *rbp)
{
	struct dn_uw_page_key k = { file, (u32)(pc >> 10) };
	struct dn_uw_page *pg = dn_uw_pages.lookup(&k);
	u32 off = pc & 0x3ff, kind = DN_UW_STOP;
	if (!pg)
		return DN_UW_STOP;
	if (pg->n == DN_UW_SPLIT) {
		k.page = (u32)(pc >> 8) | DN_UW_QUARTER;
		pg = dn_uw_pages.lookup(&k);
		off = pc & 0xff;
		if (!pg)
			return DN_UW_STOP;
	}
	u32 n = pg->n;
	/* the last row at or before off (rows are sorted; the first is at 0) */
#pragma unroll
	for (int i = 0; i < DN_UW_PAGE_ROWS; i++) {
		if (i < n && pg->r[i].off <= off) {
			kind = pg->r[i].kind;
			*cfa = pg->r[i].cfa;
			*rbp = pg->r[i].rbp;
		}
	}
	return kind;
}

/* Read the word at addr into *v, kept for a template. */
static __always_inline int dn_uw_read(struct dn_uw_state *s, u64 addr, u64 *v)
{
	if (bpf_probe_read_user(v, 8, (void *)addr) < 0)
		return -1;
	u32 i = s->nreads;
	if (i < DN_UWT_READS) {
		s->rd_addr[i & (DN_UWT_READS - 1)] = addr;
		s->rd_val[i & (DN_UWT_READS - 1)] = *v;
	}
	s->nreads = i + 1;
	return 0;
}

/* outcome of one frame */
#define DN_UW_GO 0
#define DN_UW_DONE 1 /* whole: the outermost frame */
#define DN_UW_CUT 2  /* truncated (flags say why) */
#define DN_UW_MISS 3 /* an address in no known mapping */

/* One frame: from s->ip, s->sp, s->bp to the caller's. */
static __always_inline int dn_uw_frame(struct dn_uw_state *s)
{
	u64 bias = 0;
	s64 file = dn_uw_find_map(s->map_tgid, s->ip, &bias);
	if (file < 0)
		return DN_UW_MISS;
	if (!file) {
		s->st.flags |= DN_UW_F_NOTABLE;
		return DN_UW_CUT;
	}
	u64 pc = s->ip - bias - (s->is_return ? 1 : 0);
	s32 rcfa = 0;
	s8 rrbp = 0;
	u32 kind = dn_uw_find_row((u32)file, pc, &rcfa, &rrbp);
	if (kind == DN_UW_STOP) {
		s->st.flags |= DN_UW_F_TRUNC;
		return DN_UW_CUT;
	}
	if (kind == DN_UW_END)
		return DN_UW_DONE;
	u64 w[3] = {};
	if (kind == DN_UW_SIGNAL) {
		/* the rt_sigframe's ucontext is at sp: uc_mcontext at 40, and in
		 * it rbp at 80, rsp at 120, rip at 128 */
		if (dn_uw_read(s, s->sp + 120, &w[0]) < 0 || dn_uw_read(s, s->sp + 160, &w[1]) < 0 ||
		    dn_uw_read(s, s->sp + 168, &w[2]) < 0) {
			s->st.flags |= DN_UW_F_FAULT;
			return DN_UW_CUT;
		}
		s->bp = w[0];
		s->bp_lost = 0;
		s->sp = w[1];
		s->ip = w[2];
		s->is_return = 0;
		return s->ip ? DN_UW_GO : DN_UW_DONE;
	}
	u64 cfa;
	if (kind == DN_UW_SP) {
		cfa = s->sp + (s64)rcfa;
	} else if (kind == DN_UW_FP) {
		if (s->bp_lost) {
			s->st.flags |= DN_UW_F_TRUNC;
			return DN_UW_CUT;
		}
		cfa = s->bp + (s64)rcfa;
	} else if (kind == DN_UW_PLT) {
		cfa = s->sp + 8 + ((s->ip & 15) >= (u64)rcfa ? 8 : 0);
	} else {
		s->st.flags |= DN_UW_F_TRUNC;
		return DN_UW_CUT;
	}
	u64 ra = 0;
	if (dn_uw_read(s, cfa - 8, &ra) < 0) {
		s->st.flags |= DN_UW_F_FAULT;
		return DN_UW_CUT;
	}
	if (rrbp == DN_UW_RBP_LOST) {
		s->bp_lost = 1;
	} else if (rrbp) {
		u64 bp = 0;
		if (dn_uw_read(s, cfa + 8 * (s64)rrbp, &bp) < 0) {
			s->bp_lost = 1;
		} else {
			s->bp = bp;
			s->bp_lost = 0;
		}
	}
	s->sp = cfa;
	s->ip = ra;
	s->is_return = 1;
	return ra ? DN_UW_GO : DN_UW_DONE;
}

/* Add s->ip to the stack. */
static __always_inline void dn_uw_push(struct dn_uw_state *s)
{
	u32 n = s->st.n;
	if (n > DN_UW_FRAMES)
		return;
	s->st.ip[n & 127] = s->ip;
	s->st.hash = (s->st.hash ^ s->ip) * 0x100000001b3ULL;
	s->st.n = n + 1;
}

/* The walk is over: store the stack, give its id. */
static __always_inline void dn_uw_finish(struct dn_uw_state *s)
{
	s->active = 0;
	u64 h = s->st.hash ^ s->st.flags;
	s->st.hash = h;
	s32 id = (s32)((u32)(h ^ (h >> 32)) & 0x3fffffff);
	if (!id)
		id = 1; /* 0: no stack */
	struct dn_uw_stack *have = dn_uw_stacks.lookup(&id);
	if (have) {
		if (have->hash != h) {
			dn_uw_count(5, 1);
			id = -17;
		}
	} else if (dn_uw_stacks.update(&id, &s->st) != 0) {
		dn_uw_count(5, 1);
		id = -12;
	}
	dn_uw_count(s->st.flags ? 2 : 1, 1);
	dn_uw_count(6, s->st.n);
#ifdef DN_USTACK_REUSE
	if (s->expect) {
		/* verify mode: the template gave expect */
		if (id != s->expect)
			dn_uw_count(8, 1);
	} else {
		dn_uwt_keep(s, id);
	}
#endif
	dn_uw_deliver(s->tid, id);
}

/* The stack is to be unwound in user space: copy it there, with an id of
 * its own (bit 30 set: never a hash id). */
static __always_inline void dn_uw_copy_out(struct dn_uw_state *s)
{
	/* at most DN_UW_COPY_BURST copies of a process at once, then one
	 * every DN_UW_COPY_GAP ns (a process that blocks 100 000 times a
	 * second would fill the ring before user space has loaded its
	 * mappings); without one, the stack is what was walked, from the IP,
	 * marked truncated at the unknown mapping */
	u64 now = bpf_ktime_get_ns();
	struct dn_uw_bucket *b = dn_uw_asked.lookup(&s->tgid), fresh = { now, DN_UW_COPY_BURST };
	int zero = 0;
	u32 *seq = dn_uw_seq.lookup(&zero);
	struct dn_uw_copy *c = NULL;
	if (!b) {
		dn_uw_asked.update(&s->tgid, &fresh);
		b = dn_uw_asked.lookup(&s->tgid);
	}
	if (b) {
		u64 t = b->tokens + (now - b->last) / DN_UW_COPY_GAP;
		b->tokens = t > DN_UW_COPY_BURST ? DN_UW_COPY_BURST : t;
		b->last = now;
		if (b->tokens > 0) {
			b->tokens--;
			c = dn_uw_miss.ringbuf_reserve(sizeof(struct dn_uw_copy));
		}
	}
	if (!seq || !c) {
		if (c)
			dn_uw_miss.ringbuf_discard(c, 0);
		dn_uw_count(4, 1);
		if (s->st.n == 0)
			dn_uw_push(s);
		s->st.flags |= DN_UW_F_NOTABLE;
		dn_uw_finish(s);
		return;
	}
	s->active = 0;
	*seq += 1;
	s32 id = (s32)(0x40000000U | ((bpf_get_smp_processor_id() & 0xff) << 22) | (*seq & 0x3fffff));
	c->tgid = s->tgid;
	c->tid = s->tid;
	c->id = id;
	c->execs = s->st.execs;
	c->ip = s->ip0;
	c->sp = s->sp0;
	c->bp = s->bp0;
	u32 len = 0;
	/* in 1 KiB pieces: one read across the stack's end would fail whole */
	for (int i = 0; i < DN_UW_COPY / 1024; i++) {
		if (bpf_probe_read_user(&c->data[i * 1024], 1024, (void *)(s->sp0 + i * 1024)) < 0)
			break;
		len += 1024;
	}
	c->len = len;
	dn_uw_miss.ringbuf_submit(c, 0);
	dn_uw_count(3, 1);
	dn_uw_deliver(s->tid, id);
}

/* Walk on: DN_UW_STEP frames, then the next program of the chain. */
int dn_uw_walk(void *ctx)
{
	int zero = 0;
	struct dn_uw_state *s = dn_uw_state.lookup(&zero);
	if (!s || !s->active)
		return 0;
	struct dn_uw_proc *known = dn_uw_procs.lookup(&s->tgid);
	if (!known) {
		dn_uw_copy_out(s);
		return 0;
	}
	if (s->calls == 0) {
		/* a process forked since: its parent's mappings are its own
		 * until the parent's change (an exec, a reload) */
		if (known->alias) {
			struct dn_uw_proc *parent = dn_uw_procs.lookup(&known->alias);
			if (!parent || parent->gen != known->gen) {
				dn_uw_copy_out(s);
				return 0;
			}
		}
		dn_uw_count(0, 1);
		dn_uw_push(s);
	}
	s->calls++;
	for (int i = 0; i < DN_UW_STEP; i++) {
		if (s->st.n > DN_UW_FRAMES) {
			s->st.flags |= DN_UW_F_DEEP;
			dn_uw_finish(s);
			return 0;
		}
		int r = dn_uw_frame(s);
		if (r == DN_UW_MISS) {
			dn_uw_copy_out(s);
			return 0;
		}
		if (r != DN_UW_GO) {
			dn_uw_finish(s);
			return 0;
		}
		dn_uw_push(s);
	}
	dn_uw_progs.call(ctx, 0);
	/* the chain's end (the kernel allows 33 calls): as far as it went */
	s->st.flags |= DN_UW_F_DEEP;
	dn_uw_finish(s);
	return 0;
}

/* tree.c's hooks: a process forked (not a thread) maps what its parent
 * maps until it execs or maps more (an address in none of the parent's
 * mappings then copies its stack, and user space loads its own); one that
 * exec'd has none loaded. */
#ifdef DN_PYTHON
static __always_inline void dn_py_on_fork(u32 parent, u32 child);
static __always_inline void dn_py_on_exec(u32 tgid);
#endif

static __always_inline void dn_uw_on_fork(u32 parent, u32 child)
{
#ifdef DN_PYTHON
	dn_py_on_fork(parent, child);
#endif
	/* (a new process: what a former one of that pid counted goes) */
	dn_uw_execs.delete(&child);
	struct dn_uw_proc *p = dn_uw_procs.lookup(&parent);
	if (!p)
		return;
	struct dn_uw_proc c = { p->gen, p->alias ? p->alias : parent, 0, 0 };
	dn_uw_procs.update(&child, &c);
}

static __always_inline void dn_uw_on_exec(u32 tgid)
{
#ifdef DN_PYTHON
	dn_py_on_exec(tgid);
#endif
	u32 one = 1, *n = dn_uw_execs.lookup(&tgid);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		dn_uw_execs.update(&tgid, &one);
	dn_uw_procs.delete(&tgid);
	/* a new program: its first blocks may be copied at once */
	dn_uw_asked.delete(&tgid);
}

/* A walk begun cannot run (its program is not loaded yet). */
static __always_inline void dn_uw_abandon(void)
{
	int zero = 0;
	struct dn_uw_state *s = dn_uw_state.lookup(&zero);
	if (!s || !s->active)
		return;
	s->active = 0;
	dn_uw_deliver(s->tid, DN_UW_FAILED);
}

#ifdef DN_PYTHON
static __always_inline void dn_py_run(void *ctx);
#endif

/* From the sched_switch probe, once every hook has run. */
static __always_inline void dn_uw_run(void *ctx)
{
#ifdef DN_PYTHON
	/* (its program calls the walk's) */
	dn_py_run(ctx);
#endif
	int zero = 0;
	struct dn_uw_state *s = dn_uw_state.lookup(&zero);
	if (!s || !s->active)
		return;
	dn_uw_progs.call(ctx, 0);
	/* no program in the chain (not loaded yet) */
	dn_uw_abandon();
}
#endif
