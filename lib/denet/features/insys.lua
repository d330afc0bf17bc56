-- The raw_syscalls pair and the syscall each watched thread is in
-- (bpf-src/insys.c), shared by off-CPU analysis (which syscall a thread
-- blocked in) and syscall tracking (counts and latency at exit).
return {
  name = "insys",
  description = "the syscall each watched thread is in",
  bpf = {
    file = "insys.c",
    order = 40,
    needs = { "tree" },
    variants = {
      { requires = { "task_storage" }, otherwise = { cflags = { "-DDN_INSYS_HASH" },
        note = "the syscall each thread is in is kept in a hash by thread id" } },
    },
    options = {
      { flag = "-DDN_INSYS_REGS", requires = { "task_pt_regs" },
        note = "the syscall each thread is in is tracked by a program on every syscall" },
    },
  },
}
