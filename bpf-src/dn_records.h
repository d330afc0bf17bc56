/*
 * dn_records.h - every record whose bytes both C (a BPF program, or the
 * host) and Lua read, declared once.
 *
 * Each record is DN_RECORD(name, { fields }). BPF C (through denet.h) and
 * the host (through dn.h) define DN_RECORD to declare `struct name`; the
 * host also compiles this file with DN_RECORD making text, which it hands
 * to Lua's FFI (core.records(), lib/denet/records.lua), with the sizes C
 * gives them. Changing a field here changes every side at once.
 *
 * Array sizes are the DN_* constants below (expanded into the text Lua
 * gets). Integer types are the kernel's names (u32, s32, u64, ...), which
 * the host and the FFI typedef as BPF C has them. No include guard on
 * the records: the host includes this file twice.
 */
#ifndef DN_RECORDS_CONSTANTS
#define DN_RECORDS_CONSTANTS
/* frames a frame-pointer walk loses, recovered from .eh_frame (offcpu.c) */
#define DN_LEAF_FRAMES 3
/* frames of a user stack template (offcpu.c, DN_USTACK_REUSE) */
#define DN_UT_FRAMES 8
/* a kernel stack template (offcpu.c, DN_KSTACK_REUSE): its slots, and the
 * bytes of stack sent to learn one (from the tracepoint's sp up, and the
 * top part with the syscall entry's frames) */
#define DN_KT_SLOTS 32
#define DN_KT_INNER 2048
#define DN_KT_OUTER 256
/* kernel frames a snapshot reads of each thread (tasks.c) */
#define DN_SNAP_KFRAMES 32
/* unwind tables (host/dn_unwind.c, unwind.c): the kinds of rows, and
 * the rbp rule of a row whose caller's rbp cannot be found */
#define DN_UW_STOP 0   /* no rule the walk can apply: it ends, truncated */
#define DN_UW_SP 1     /* CFA = rsp + cfa */
#define DN_UW_FP 2     /* CFA = rbp + cfa */
#define DN_UW_PLT 3    /* CFA = rsp + 8, + 8 from byte aux of each 16-byte stub */
#define DN_UW_SIGNAL 4 /* a signal trampoline: the caller's registers in the ucontext */
#define DN_UW_END 5    /* the outermost frame: the stack is whole */
#define DN_UW_RBP_LOST (-128)
/* the most frames a user stack walk gives, and the bytes of stack copied
 * to user space when the walk meets an unknown mapping */
#define DN_UW_FRAMES 127
#define DN_UW_COPY 8192
/* a page of a table in the kernel: rows it holds, its bytes (and a
 * quarter's, when a page with more rows is split), and the mappings a
 * 64 KiB region of a process's addresses holds */
#define DN_UW_PAGE_ROWS 32
#define DN_UW_PAGE 1024
#define DN_UW_PART 256
#define DN_UW_SPLIT 0xffff
#define DN_UW_QUARTER 0x80000000U
#define DN_UW_REGION_MAPS 2
/* the words a user stack template keeps (unwind.c, DN_USTACK_REUSE) */
#define DN_UWT_READS 16
/* Python frames a stack keeps (python.c), and the flag of a frame that
 * entered the interpreter from C (the last of a _PyEval_EvalFrameDefault) */
#define DN_PY_FRAMES 64
#define DN_PY_ENTRY 0x80000000U
#endif

/* One row of an unwind table: from pc (the file's virtual address) up to
 * the next row's, the caller's frame is found by kind (DN_UW_*): CFA
 * from rsp or rbp + cfa; the return address at CFA - 8; rbp kept (0),
 * saved at CFA + 8 * rbp, or lost (DN_UW_RBP_LOST). */
DN_RECORD(dn_uw_row, {
	u32 pc;
	s32 cfa;
	u8 kind;
	s8 rbp;
	u8 aux; /* DN_UW_PLT: the byte of the stub from which 8 more */
	u8 pad;
})

/* A page of a file's unwind table in the kernel (unwind.c's dn_uw_pages):
 * key (file, address >> 10, or for a quarter of a split page
 * DN_UW_QUARTER | address >> 8); the rows from the page's start, the one
 * in effect there first (off 0). */
DN_RECORD(dn_uw_page_key, { u32 file, page; })
DN_RECORD(dn_uw_prow, {
	u16 off; /* from the page's (or quarter's) start */
	u8 kind;
	s8 rbp;
	s32 cfa; /* DN_UW_PLT: the stub's byte from which 8 more */
})
DN_RECORD(dn_uw_page, {
	u32 n; /* rows; DN_UW_SPLIT: see the quarters */
	u32 pad;
	struct dn_uw_prow r[DN_UW_PAGE_ROWS];
})

/* Where a walk of a user stack began (unwind.c's templates): the
 * registers at kernel entry, and the template's way (two per place). */
DN_RECORD(dn_uwt_key, {
	u32 tgid;
	u32 way;
	u64 ip, sp, bp;
})

/* A user stack copied to user space to be unwound there (unwind.c's
 * dn_uw_miss): its registers and DN_UW_COPY bytes from sp (len read). */
DN_RECORD(dn_uw_copy, {
	u32 tgid, tid;
	s32 id;
	u32 len;
	u32 execs; /* the process's image (dn_uw_stack's execs) */
	u32 pad;
	u64 ip, sp, bp;
	u8 data[DN_UW_COPY];
})

/* A Python stack (python.c's dn_py_stacks), innermost frame first: each
 * frame's code object, the instruction it is at (code units from the
 * code's start; DN_PY_ENTRY set on the frame a C call of the interpreter
 * began with) and the code's co_firstlineno then (checked again when the
 * code object is read: its memory may have been reused since). */
DN_RECORD(dn_py_frame, {
	u64 code;
	u32 instr;
	s32 first;
})
DN_RECORD(dn_py_stack, {
	u64 hash;
	u32 n, flags; /* flags: DN_PY_F_* (python.c) */
	u32 tgid, pad;
	struct dn_py_frame f[DN_PY_FRAMES];
})
/* A Python process (python.c's dn_py_procs): where its runtime state and
 * the type of code objects are (addresses in it). */
DN_RECORD(dn_py_proc, {
	u64 runtime;
	u64 code_type;
})
/* A Python stack stored for the first time: its code objects are to be
 * read while the process lives (python.c's dn_py_new). */
DN_RECORD(dn_py_new_rec, {
	u32 tgid;
	s32 id;
})

/* One tracked process (thread group) of tree.c's dn_tracked, keyed by
 * tgid; read whole every sample by the monitor (lib/denet/tree.lua). */
DN_RECORD(dn_task, {
	u32 ppid;    /* the process that forked it (0: a root) */
	u32 running; /* its threads on a CPU right now */
	u64 nvcsw;   /* voluntary context switches of all its threads */
	u64 nivcsw;  /* involuntary ones (preempted while runnable) */
	u64 ins;     /* times one of its threads was switched in */
})

/* fork/exec/exit of a tracked process (tree.c's dn_tree_events) */
DN_RECORD(dn_tree_event, {
	u32 kind; /* DN_EV_FORK, DN_EV_EXEC, DN_EV_EXIT */
	u32 pid;
	u32 ppid;
	u32 pad;
	u64 ts_ns; /* bpf_ktime_get_ns() */
	u64 nvcsw; /* at exit: final context switch counts */
	u64 nivcsw;
	char comm[16];
	char filename[128]; /* at exec */
})

/* Where a thread blocked, for a kernel stack template (offcpu.c) */
DN_RECORD(dn_kt_key, {
	s32 syscall;
	u16 state;
	u16 way;
	u64 uip; /* user IP at kernel entry */
})

/* A walked kernel stack and copies of the stack memory it was found in,
 * for user space to learn a template from (dn_kt_learn) */
DN_RECORD(dn_kt_rec, {
	struct dn_kt_key key;
	s32 kstack;
	u32 ok; /* the copies were read */
	u64 sp, top;
	u64 inner[DN_KT_INNER / 8]; /* from sp up (zeros past the top) */
	u64 outer[DN_KT_OUTER / 8]; /* the top part */
})

/* An IP of a traced process and whether it is a return address: the key
 * of an unwind rule (offcpu.c, DN_LEAF_UNWIND) */
DN_RECORD(dn_leaf_key, {
	u32 tgid;
	u32 is_return; /* ip is a return address (the call is before it) */
	u64 ip;
})

/* A request for an unwind rule: the IP, and the thread and stack pointer
 * it was met with (user space reads on from there while the thread is
 * still blocked, and learns the rules of the frames above too) */
DN_RECORD(dn_leaf_ask, {
	struct dn_leaf_key key;
	u64 sp;
	u32 tid, pad;
})

/* Where a user stack walk began: the key of a user stack template */
DN_RECORD(dn_ut_key, {
	u32 tgid, pad;
	u64 ip, sp, bp;
})

/* A user stack template: the id, and every word the walk read */
DN_RECORD(dn_ut, {
	s32 ustack;
	u32 n;                  /* frames read */
	u64 end;                /* the frame address the walk could not read */
	u64 fp[DN_UT_FRAMES];   /* frame addresses */
	u64 next[DN_UT_FRAMES]; /* the next frame address each held */
	u64 ret[DN_UT_FRAMES];  /* the return address each held */
	/* the frames the walk lost (DN_LEAF_UNWIND), when known: where each
	 * was read and what it was */
	u32 nleaf, leaf_ok;
	u64 leaf_at[DN_LEAF_FRAMES];
	u64 leaf_val[DN_LEAF_FRAMES];
})

/* What a user stack walk read, for user space to make a template of */
DN_RECORD(dn_ut_rec, {
	struct dn_ut_key key;
	struct dn_ut t;
})

/* One thread as it is now, from the task iterator (tasks.c) */
DN_RECORD(dn_snap_rec, {
	u32 tgid, tid;
	u32 state, flags;
	s32 cpu;
	s32 kbytes;     /* bytes of kstack, or bpf_get_task_stack's error */
	u64 exec_start; /* se.exec_start: the run queue's task clock when it last ran */
	u64 runtime;    /* se.sum_exec_runtime */
	u64 ip, sp, bp; /* the user registers saved at kernel entry */
	u64 cx, r11, eflags, orig_ax;
	char comm[16];
	u64 kstack[DN_SNAP_KFRAMES];
})

/* One process's figures from /proc, as the host's readers fill them
 * (host/dn_procfs.c; lib/denet/procfs.lua views an array of them) */
DN_RECORD(dn_psample, {
	s32 pid, ppid;
	s32 state; /* the stat state letter */
	s32 threads;
	s32 processor;
	s32 fd_count; /* -1 when unreadable */
	u32 flags;
	s32 pad_;
	u64 utime, stime, cutime, cstime; /* clock ticks */
	u64 minflt, cminflt, majflt, cmajflt;
	u64 starttime; /* clock ticks after boot */
	u64 vsize;     /* bytes */
	u64 rss_pages;
	u64 rchar, wchar, read_bytes, write_bytes, cancelled_write_bytes;
	u64 pss_kb, uss_kb; /* from smaps_rollup, when asked (DN_PS_PSS) */
	u64 nvcsw, nivcsw;  /* from status, when asked */
	char comm[16];
})
