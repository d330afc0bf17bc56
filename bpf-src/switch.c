/*
 * switch.c - the one sched_switch probe of a program; it calls the hooks
 * of the features composed before it (libbcc allows one TRACEPOINT_PROBE
 * per tracepoint in a program). Enable hooks with -DDN_HOOK_CTXSW and
 * -DDN_HOOK_OFFCPU. Needs tree.c.
 */
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
