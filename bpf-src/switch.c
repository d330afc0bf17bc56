/*
 * switch.c - the one sched_switch probe of a program; it calls the hooks
 * of the features composed before it (libbcc allows one TRACEPOINT_PROBE
 * per tracepoint in a program). Enable hooks with -DDN_HOOK_CTXSW and
 * -DDN_HOOK_OFFCPU. Needs tree.c.
 */
#ifdef DN_SWITCH_RAW
/* As a raw tracepoint (it detaches at once) for what needs no tracepoint
 * record (the off-CPU hook reads it): sched_switch(bool preempt, struct
 * task_struct *prev, struct task_struct *next, unsigned int prev_state).
 * The previous task is the current one. */
RAW_TRACEPOINT_PROBE(sched_switch)
{
	u32 prev = (u32)bpf_get_current_pid_tgid(), next = 0;
	bpf_probe_read_kernel(&next, sizeof(next), (char *)ctx->args[2] + DN_TASK_PID_OFF);
	if (!dn_maybe_watched(prev) && !dn_maybe_watched(next))
		return 0;
	/* the hook tells voluntary from involuntary only: the task blocked
	 * (any state, RT kernels' lock waits too) unless it was preempted */
	long state = !(ctx->args[0] & 1) && (u32)ctx->args[3] != 0;
#ifdef DN_HOOK_CTXSW
	dn_ctxsw_on_switch(prev, state, next);
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
	return 0;
}
#endif
