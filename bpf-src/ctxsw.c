/*
 * ctxsw.c - context switches of every tracked process, counted at
 * sched_switch for all its threads (including threads that have exited,
 * which /proc no longer shows), and which processes ran: switch-ins and
 * the number of its threads on a CPU now. Needs tree.c; called from
 * switch.c (-DDN_HOOK_CTXSW).
 *
 * Voluntary: the thread blocked. Involuntary: it was preempted while
 * runnable (or yielded), as getrusage counts them. User space reads a
 * process's /proc files only when it ran since the last sample (its
 * switch counts moved, or a thread is on a CPU now).
 */
static __always_inline void dn_ctxsw_on_switch(u32 prev, long prev_state, u32 next)
{
	struct dn_thread *pt = dn_threads.lookup(&prev);
	if (pt) {
		struct dn_task *t = dn_is_tracked(pt->tgid);
		if (t) {
			if (prev_state & DN_TASK_STATE_MASK)
				__sync_fetch_and_add(&t->nvcsw, 1);
			else
				__sync_fetch_and_add(&t->nivcsw, 1);
			if (pt->oncpu) {
				pt->oncpu = 0;
				__sync_fetch_and_add(&t->running, -1);
			}
		}
	}
	struct dn_thread *nt = dn_threads.lookup(&next);
	if (nt) {
		struct dn_task *t = dn_is_tracked(nt->tgid);
		if (t) {
			__sync_fetch_and_add(&t->ins, 1);
			if (!nt->oncpu) {
				nt->oncpu = 1;
				__sync_fetch_and_add(&t->running, 1);
			}
		}
	}
}
