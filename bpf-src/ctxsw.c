/*
 * ctxsw.c - context switches of every tracked process, counted at
 * sched_switch for all its threads (including threads that have exited,
 * which /proc no longer shows). Needs tree.c.
 *
 * Voluntary: the thread blocked. Involuntary: it was preempted while
 * runnable (or yielded), as getrusage counts them.
 */
TRACEPOINT_PROBE(sched, sched_switch)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32; /* current is prev */
	struct dn_task *t = dn_is_tracked(tgid);
	if (!t)
		return 0;
	if (args->prev_state & DN_TASK_STATE_MASK)
		__sync_fetch_and_add(&t->nvcsw, 1);
	else
		__sync_fetch_and_add(&t->nivcsw, 1);
	return 0;
}
