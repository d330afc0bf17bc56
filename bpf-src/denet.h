/*
 * denet.h - types shared by denet's BPF programs and their Lua readers
 * (lib/denet/tree.lua declares the same layouts for the FFI).
 *
 * Only tracepoint arguments and helpers are used: no kernel struct layout
 * from headers, which may not match the running kernel.
 */
#ifndef DENET_BPF_H
#define DENET_BPF_H

#define DN_CLONE_THREAD 0x00010000ULL

/* sched_switch's prev_state: the task state bits; a preempted task
 * reports TASK_REPORT_MAX (0x100), which has none of them set */
#define DN_TASK_STATE_MASK 0xffULL

/* v, made no larger than max (a constant) in the very register that is
 * used afterwards. Written as `if (v > max) v = max;`, clang may compare a
 * copy of v, and verifiers before 6.x do not carry that bound over to v:
 * "unbounded memory access" on 6.1. */
#define DN_BOUND(v, max)                                                                \
	({                                                                              \
		u64 __dn_v = (v);                                                       \
		asm volatile("if %0 <= %1 goto +1; %0 = %1" : "+r"(__dn_v) : "i"(max)); \
		__dn_v;                                                                 \
	})

/* The user registers a task saved at kernel entry (struct pt_regs, the
 * ptrace layout fixed by the x86-64 ABI): offsets of those read. */
#define DN_PT_REGS_SIZE 168
#define DN_PT_REGS_BP 32
#define DN_PT_REGS_R11 48
#define DN_PT_REGS_CX 88
#define DN_PT_REGS_ORIG_AX 120
#define DN_PT_REGS_IP 128
#define DN_PT_REGS_FLAGS 144
#define DN_PT_REGS_SP 152

/* One tracked process (thread group), keyed by tgid. */
struct dn_task {
	u32 ppid;    /* the process that forked it (0: a root) */
	u32 running; /* its threads on a CPU right now */
	u64 nvcsw;   /* voluntary context switches of all its threads */
	u64 nivcsw;  /* involuntary ones (preempted while runnable) */
	u64 ins;     /* times one of its threads was switched in */
};

/* One thread of a tracked process, keyed by tid. */
struct dn_thread {
	u32 tgid;
	u32 oncpu; /* switched in and not out since */
};

enum dn_tree_kind { DN_EV_FORK = 1, DN_EV_EXEC = 2, DN_EV_EXIT = 3 };

/* fork/exec/exit of a tracked process, for user space */
struct dn_tree_event {
	u32 kind;
	u32 pid;
	u32 ppid;
	u32 pad;
	u64 ts_ns; /* bpf_ktime_get_ns() */
	u64 nvcsw; /* at exit: final context switch counts */
	u64 nivcsw;
	char comm[16];
	char filename[128]; /* at exec */
};

#endif
