/*
 * switch.c - the one sched_switch probe of a program; it calls the hooks
 * of the features composed before it (libbcc allows one TRACEPOINT_PROBE
 * per tracepoint in a program). Enable hooks with -DDN_HOOK_CTXSW and
 * -DDN_HOOK_OFFCPU. Needs tree.c.
 */
#ifdef DN_SWITCH_RAW
/* The state the sched_switch tracepoint reports for the task switched
 * out (__trace_sched_switch_state): 0x100 when preempted, else one bit
 * per ps letter (S 1, D 2, T 4, t 8, X 16, Z 32, P 64, I 128). */
static __always_inline long dn_switch_report_state(u64 preempt, u32 raw)
{
	if (preempt & 1)
		return 0x100;
	if ((raw & 0x402) == 0x402) /* TASK_IDLE */
		return 0x80;
	if (raw & 0x1000) /* TASK_RTLOCK_WAIT: reported as D */
		return 2;
	if (raw & 0x80) /* TASK_DEAD */
		return 0x10;
	raw &= 0x7f;
	/* the highest bit, as the kernel's fls() picks: copy it into every
	 * bit below, then keep the top one */
	raw |= raw >> 1;
	raw |= raw >> 2;
	raw |= raw >> 4;
	return raw ^ (raw >> 1);
}

/* As a raw tracepoint (it detaches at once, and the kernel runs it even
 * while another BPF program or a map operation holds the CPU):
 * sched_switch(bool preempt, struct task_struct *prev, struct task_struct
 * *next, unsigned int prev_state). The previous task is the current one. */
RAW_TRACEPOINT_PROBE(sched_switch)
{
	u32 prev = (u32)bpf_get_current_pid_tgid(), next = 0;
	bpf_probe_read_kernel(&next, sizeof(next), (char *)ctx->args[2] + DN_TASK_PID_OFF);
	if (!dn_maybe_watched(prev) && !dn_maybe_watched(next))
		return 0;
#ifdef DN_HOOK_CTXSW
	/* the hook tells voluntary from involuntary only, as the kernel
	 * counts them: the task blocked (any state, RT kernels' lock waits
	 * too) unless it was preempted */
	dn_ctxsw_on_switch(prev, !(ctx->args[0] & 1) && (u32)ctx->args[3] != 0, next);
#endif
#ifdef DN_HOOK_OFFCPU
	dn_offcpu_on_switch(ctx, prev, dn_switch_report_state(ctx->args[0], (u32)ctx->args[3]), next);
#endif
#ifdef DN_DWARF_UNWIND
	/* last: a tail call does not come back */
	dn_uw_run(ctx);
#endif
	return 0;
}
#else
TRACEPOINT_PROBE(sched, sched_switch)
{
	u32 prev = args->prev_pid, next = args->next_pid;
	/* most switches on a busy machine are of threads nobody watches */
	if (!dn_maybe_watched(prev) && !dn_maybe_watched(next))
		return 0;
	long state = args->prev_state;
#ifdef DN_HOOK_CTXSW
	dn_ctxsw_on_switch(prev, state, next);
#endif
#ifdef DN_HOOK_OFFCPU
	dn_offcpu_on_switch(args, prev, state, next);
#endif
#ifdef DN_DWARF_UNWIND
	/* last: a tail call does not come back */
	dn_uw_run(args);
#endif
	return 0;
}
#endif
