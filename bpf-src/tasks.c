/*
 * tasks.c - every thread as it is right now, from the kernel's task
 * iterator: its state, when it last ran, its CPU time, the user registers
 * it saved at kernel entry and its kernel stack. Nothing is stopped and
 * nothing is attached; user space reads the records from the iterator's
 * file (lib/denet/snapshot.lua).
 *
 * The task_struct fields are read at the offsets the kernel's BTF gives
 * (-DDN_TASK_*_OFF); the iterator's context is the kernel's
 * struct bpf_iter__task, two pointers.
 */
#include "denet.h"

struct bpf_iter_meta {
	struct seq_file *seq;
	u64 session_id;
	u64 seq_num;
};

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
};

/* each thread: a struct dn_snap_rec (dn_records.h) */
/* which processes: [0] = 1 for every one; else those in dn_snap_pids */
BPF_ARRAY(dn_snap_all, u32, 1);
BPF_HASH(dn_snap_pids, u32, u32, 8192);
BPF_PERCPU_ARRAY(dn_snap_buf, struct dn_snap_rec, 1);
BPF_PERCPU_ARRAY(dn_snap_ptr, u64, 1);

static __always_inline void dn_snap_read(void *dst, u32 size, struct task_struct *t, long off)
{
	if (off >= 0)
		bpf_probe_read_kernel(dst, size, (char *)t + off);
}

BPF_ITER(task)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	int zero = 0;

	if (!task)
		return 0;
	struct dn_snap_rec *r = dn_snap_buf.lookup(&zero);
	u64 *scratch = dn_snap_ptr.lookup(&zero);
	if (!r || !scratch)
		return 0;
	r->tgid = 0;
	r->tid = 0;
	dn_snap_read(&r->tgid, 4, task, DN_TASK_TGID_OFF);
	dn_snap_read(&r->tid, 4, task, DN_TASK_PID_OFF);
	u32 *all = dn_snap_all.lookup(&zero);
	if (!(all && *all) && !dn_snap_pids.lookup(&r->tgid))
		return 0;
	r->state = 0;
	r->flags = 0;
	r->cpu = -1;
	r->exec_start = 0;
	r->runtime = 0;
	dn_snap_read(&r->state, 4, task, DN_TASK_STATE_OFF);
	dn_snap_read(&r->flags, 4, task, DN_TASK_FLAGS_OFF);
	dn_snap_read(&r->cpu, 4, task, DN_TASK_CPU_OFF);
	dn_snap_read(&r->exec_start, 8, task, DN_TASK_EXEC_START_OFF);
	dn_snap_read(&r->runtime, 8, task, DN_TASK_RUNTIME_OFF);
	dn_snap_read(r->comm, sizeof(r->comm), task, DN_TASK_COMM_OFF);
	r->ip = r->sp = r->bp = r->cx = r->r11 = r->eflags = r->orig_ax = 0;
	/* kernel threads (PF_KTHREAD) have no user registers */
	if (!(r->flags & 0x00200000)) {
		/* the pointer is made a number through a map: the verifier
		 * allows no arithmetic on it */
		*(void *volatile *)scratch = (void *)bpf_task_pt_regs(task);
		u64 regs = *(volatile u64 *)scratch;
		if (regs) {
			bpf_probe_read_kernel(&r->ip, 8, (void *)(regs + DN_PT_REGS_IP));
			bpf_probe_read_kernel(&r->sp, 8, (void *)(regs + DN_PT_REGS_SP));
			bpf_probe_read_kernel(&r->bp, 8, (void *)(regs + DN_PT_REGS_BP));
			bpf_probe_read_kernel(&r->cx, 8, (void *)(regs + DN_PT_REGS_CX));
			bpf_probe_read_kernel(&r->r11, 8, (void *)(regs + DN_PT_REGS_R11));
			bpf_probe_read_kernel(&r->eflags, 8, (void *)(regs + DN_PT_REGS_FLAGS));
			bpf_probe_read_kernel(&r->orig_ax, 8, (void *)(regs + DN_PT_REGS_ORIG_AX));
		}
	}
	/* a running task's stack changes under the walk: only sleepers' */
	r->kbytes = 0;
	if (r->state != 0)
		r->kbytes = bpf_get_task_stack(task, r->kstack, sizeof(r->kstack), 0);
	bpf_seq_write(seq, r, sizeof(*r));
	return 0;
}
