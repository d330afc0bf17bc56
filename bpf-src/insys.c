/*
 * insys.c - the syscall each thread of the watched set is in, for features
 * that need to know why a thread waits (off-CPU analysis; syscall
 * tracking shares it). dn_insys: tid -> syscall number, set at sys_enter,
 * removed at sys_exit, for the threads tree.c's dn_wanted() selects.
 */
BPF_HASH(dn_insys, u32, s32, 65536);

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	if (!dn_maybe_watched(tid) || !dn_wanted(id >> 32, tid))
		return 0;
	s32 nr = args->id;
	dn_insys.update(&tid, &nr);
	return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	if (!dn_maybe_watched(tid) || !dn_wanted(id >> 32, tid))
		return 0;
	dn_insys.delete(&tid);
	return 0;
}
