/*
 * tree.c - the tracked process tree, shared by every denet feature.
 *
 * dn_tracked holds the tgids being watched. User space seeds it with the
 * root(s); new processes forked by a tracked one are added here, in the
 * kernel, before the child first runs (task_newtask fires in
 * copy_process), so not one event of a short-lived child is missed.
 * Threads (CLONE_THREAD) are not processes and are not added. Fork, exec
 * and exit are reported to user space through dn_tree_events; these are
 * rare events, so they are sent one by one.
 *
 * dn_threads maps the tid of every thread of a tracked process to its
 * tgid (sched_switch names the next task only by tid).
 *
 * Other features filter with dn_wanted(tgid, tid), which follows the run's
 * target as user space wrote it in dn_tree_cfg before the probes were
 * attached: the tracked tree, every thread of the machine (but denet's
 * own), or one thread. A map, not -D flags: the program is the same for
 * every target, and the compile cache serves them all.
 */
#include "denet.h"

#ifndef DN_MAX_TRACKED
#define DN_MAX_TRACKED 8192
#endif
#ifndef DN_MAX_THREADS
#define DN_MAX_THREADS 65536
#endif
#ifndef DN_TREE_PAGES
#define DN_TREE_PAGES 64
#endif

BPF_HASH(dn_tracked, u32, struct dn_task, DN_MAX_TRACKED);
BPF_HASH(dn_threads, u32, struct dn_thread, DN_MAX_THREADS);
/* How many watched threads have a tid with these low 16 bits: a check
 * that costs an array load, so the switches and syscalls of every other
 * thread on the machine leave after it without a hash lookup. */
BPF_ARRAY(dn_tidmask, u32, 65536);

enum dn_tree_mode {
	DN_TREE_MODE_TREE = 0, /* the tracked tree (dn_tracked) */
	DN_TREE_MODE_ALL = 1,  /* every thread of the machine but self_tgid's */
	DN_TREE_MODE_TID = 2,  /* the one thread tid */
};
/* the run's target, written before any probe is attached */
struct dn_tree_cfg {
	u32 mode; /* enum dn_tree_mode */
	u32 tid;
	u32 self_tgid; /* denet itself: left out of DN_TREE_MODE_ALL */
	u32 pad;
};
BPF_ARRAY(dn_tree_cfg, struct dn_tree_cfg, 1);

static __always_inline struct dn_tree_cfg *dn_tree_config(void)
{
	u32 zero = 0;
	return dn_tree_cfg.lookup(&zero);
}

static __always_inline int dn_maybe_watched(u32 tid)
{
	struct dn_tree_cfg *cfg = dn_tree_config();
	if (cfg && cfg->mode == DN_TREE_MODE_ALL)
		return tid != 0;
	u32 slot = tid & 0xffff;
	u32 *c = dn_tidmask.lookup(&slot);
	return c && *c;
}

static __always_inline void dn_tidmask_add(u32 tid, int delta)
{
	u32 slot = tid & 0xffff;
	u32 *c = dn_tidmask.lookup(&slot);
	if (c)
		__sync_fetch_and_add(c, delta);
}
/* Events to user space: a ring buffer, or a perf buffer where the kernel
 * has none (-DDN_TREE_PERF, before 5.8). They are rare (fork, exec,
 * exit), so each is built on the stack and copied out. */
#ifdef DN_TREE_PERF
BPF_PERF_OUTPUT(dn_tree_events);
#else
BPF_RINGBUF_OUTPUT(dn_tree_events, DN_TREE_PAGES);
#endif

static __always_inline void dn_tree_send(void *ctx, struct dn_tree_event *e)
{
#ifdef DN_TREE_PERF
	dn_tree_events.perf_submit(ctx, e, sizeof(*e));
#else
	dn_tree_events.ringbuf_output(e, sizeof(*e), 0);
#endif
}

static __always_inline struct dn_task *dn_is_tracked(u32 tgid)
{
	return dn_tracked.lookup(&tgid);
}

/* The threads a feature watches: the tracked tree, every thread of the
 * machine but denet's own, or one thread (dn_tree_cfg). */
static __always_inline int dn_wanted(u32 tgid, u32 tid)
{
	struct dn_tree_cfg *cfg = dn_tree_config();
	if (cfg && cfg->mode == DN_TREE_MODE_TID)
		return tid == cfg->tid;
	if (cfg && cfg->mode == DN_TREE_MODE_ALL)
		return tid != 0 && tgid != cfg->self_tgid;
	return dn_is_tracked(tgid) != 0;
}

#ifdef DN_HOOK_OFFCPU
/* defined by offcpu.c, composed after this file */
static __always_inline void dn_offcpu_thread_start(u32 tid, u32 tgid);
static __always_inline void dn_offcpu_thread_exit(u32 tid);
#endif
#ifdef DN_DWARF_UNWIND
/* defined by unwind.c: what a forked or exec'd process maps */
static __always_inline void dn_uw_on_fork(u32 parent, u32 child);
static __always_inline void dn_uw_on_exec(u32 tgid);
#endif
#ifdef DN_INSYS_HASH
/* defined by insys.c: a thread's record goes with the thread */
static __always_inline void dn_insys_thread_exit(u32 tid);
#endif

/* The probes come in two kinds. As raw tracepoints (-DDN_TREE_RAW, when
 * the kernel's BTF gives the offsets: DN_TASK_PID_OFF, DN_BPRM_FILENAME_OFF)
 * they detach at once; as tracepoints (perf events) each takes the kernel
 * RCU grace periods to detach. Their bodies are shared. */

static __always_inline int dn_on_newtask(void *ctx, u32 child, u64 clone_flags)
{
	u64 cur = bpf_get_current_pid_tgid();
	u32 parent = cur >> 32;
#ifdef DN_HOOK_OFFCPU
	if (dn_wanted(parent, (u32)cur))
		dn_offcpu_thread_start(child, (clone_flags & DN_CLONE_THREAD) ? parent : child);
#endif
#ifdef DN_DWARF_UNWIND
	if (!(clone_flags & DN_CLONE_THREAD))
		dn_uw_on_fork(parent, child);
#endif
	if (!dn_is_tracked(parent))
		return 0;
	struct dn_thread th = {};
	if (clone_flags & DN_CLONE_THREAD) {
		/* a thread of the same process */
		th.tgid = parent;
		dn_threads.update(&child, &th);
		dn_tidmask_add(child, 1);
		return 0;
	}
	struct dn_task t = {};
	t.ppid = parent;
	dn_tracked.update(&child, &t);
	th.tgid = child;
	dn_threads.update(&child, &th);
	dn_tidmask_add(child, 1);
	struct dn_tree_event e = {};
	e.kind = DN_EV_FORK;
	e.pid = child;
	e.ppid = parent;
	e.ts_ns = bpf_ktime_get_ns();
	/* the new task's name is its parent's until it execs */
	bpf_get_current_comm(e.comm, sizeof(e.comm));
	dn_tree_send(ctx, &e);
	return 0;
}

/* e->filename is filled by the caller */
static __always_inline int dn_on_exec(void *ctx, u32 old_pid, u32 pid, struct dn_tree_event *e)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
#ifdef DN_DWARF_UNWIND
	dn_uw_on_exec(tgid);
#endif
	struct dn_task *t = dn_is_tracked(tgid);
	if (!t)
		return 0;
	if (old_pid != pid) {
		/* a non-leader thread exec'd and took the leader's tid */
		dn_threads.delete(&old_pid);
	}
	e->kind = DN_EV_EXEC;
	e->pid = tgid;
	e->ppid = t->ppid;
	e->ts_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	dn_tree_send(ctx, e);
	return 0;
}

/* group_dead: 1 when the last thread of its process exits, 0 when not,
 * -1 when the kernel does not say (then: the leader's exit) */
static __always_inline int dn_on_exit(void *ctx, int group_dead)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
#ifdef DN_HOOK_OFFCPU
	if (dn_wanted(tgid, tid))
		dn_offcpu_thread_exit(tid);
#endif
#ifdef DN_INSYS_HASH
	dn_insys_thread_exit(tid);
#endif
	struct dn_thread *th = dn_threads.lookup(&tid);
	if (th) {
		if (th->oncpu) {
			/* it will not be switched out as itself again */
			struct dn_task *owner = dn_is_tracked(th->tgid);
			if (owner)
				__sync_fetch_and_add(&owner->running, -1);
		}
		dn_threads.delete(&tid);
		dn_tidmask_add(tid, -1);
	}
	if (group_dead == 0 || (group_dead < 0 && tid != tgid))
		return 0; /* a thread, not the last one of its process */
	struct dn_task *t = dn_is_tracked(tgid);
	if (!t)
		return 0;
	struct dn_tree_event e = {};
	e.kind = DN_EV_EXIT;
	e.pid = tgid;
	e.ppid = t->ppid;
	e.ts_ns = bpf_ktime_get_ns();
	e.nvcsw = t->nvcsw;
	e.nivcsw = t->nivcsw;
	bpf_get_current_comm(e.comm, sizeof(e.comm));
	dn_tree_send(ctx, &e);
	dn_tracked.delete(&tgid);
	return 0;
}

#ifdef DN_TREE_RAW
/* task_newtask(struct task_struct *task, unsigned long clone_flags) */
RAW_TRACEPOINT_PROBE(task_newtask)
{
	u32 child = 0;
	bpf_probe_read_kernel(&child, sizeof(child), (char *)ctx->args[0] + DN_TASK_PID_OFF);
	return dn_on_newtask(ctx, child, ctx->args[1]);
}

/* sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
	struct dn_tree_event e = {};
	const char *filename = 0;
	bpf_probe_read_kernel(&filename, sizeof(filename), (char *)ctx->args[2] + DN_BPRM_FILENAME_OFF);
	if (filename)
		bpf_probe_read_kernel_str(e.filename, sizeof(e.filename), filename);
	return dn_on_exec(ctx, (u32)ctx->args[1], (u32)bpf_get_current_pid_tgid(), &e);
}

/* sched_process_exit(struct task_struct *p [, bool group_dead]) */
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
#ifdef DN_HAVE_GROUP_DEAD
	return dn_on_exit(ctx, ctx->args[1] & 1);
#else
	return dn_on_exit(ctx, -1);
#endif
}
#else
TRACEPOINT_PROBE(task, task_newtask)
{
	return dn_on_newtask(args, args->pid, args->clone_flags);
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	struct dn_tree_event e = {};
	TP_DATA_LOC_READ_STR(e.filename, filename, sizeof(e.filename));
	return dn_on_exec(args, args->old_pid, args->pid, &e);
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
#ifdef DN_HAVE_GROUP_DEAD
	return dn_on_exit(args, args->group_dead);
#else
	return dn_on_exit(args, -1);
#endif
}
#endif
