/*
 * denet.h - what denet's BPF programs share: constants, helpers, and the
 * records user space reads (dn_records.h, declared once for every side).
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
#define DN_PT_REGS_R10 56
#define DN_PT_REGS_CX 88
#define DN_PT_REGS_DX 96
#define DN_PT_REGS_ORIG_AX 120
#define DN_PT_REGS_IP 128
#define DN_PT_REGS_FLAGS 144
#define DN_PT_REGS_SP 152

/* One thread of a tracked process, keyed by tid. */
struct dn_thread {
	u32 tgid;
	u32 oncpu; /* switched in and not out since */
};

enum dn_tree_kind { DN_EV_FORK = 1, DN_EV_EXEC = 2, DN_EV_EXIT = 3 };

/* the records user space reads too (dn_task, dn_tree_event, ...): declared
 * once, for BPF C, the host and Lua */
#define DN_RECORD(name, ...) struct name __VA_ARGS__;
#include "dn_records.h"

#endif
