-- denet.syscalls: syscall counts, errors and latency per process (or
-- thread) and syscall. The kernel side (bpf-src/syscalls.c, called from
-- insys.c's sys_exit program) sums everything in per-CPU maps; this module
-- reads them into reports (the JSON contract of docs/syscalls.md), tables
-- and histograms, and the monitor's per-sample fields.
local ffi = require("ffi")
local core = require("denet.core")
local sysnames = require("denet.sysnames")

local M = {}

M.SLOTS = 40 -- log2 latency buckets (DN_SC_SLOTS)
local NRS = 1024 -- syscall numbers the in-kernel filter covers (DN_SC_NRS)

---------------------------------------------------------------------------
-- categories (the original denet's names)

local CATEGORY = {}
local function cat(name, list)
  for s in list:gmatch("%S+") do
    CATEGORY[s] = name
  end
end
cat("file_io", [[read write pread64 pwrite64 readv writev preadv pwritev preadv2 pwritev2 open openat openat2
  creat close close_range lseek stat fstat lstat newfstatat statx access faccessat faccessat2 fsync fdatasync
  sync syncfs sync_file_range truncate ftruncate rename renameat renameat2 mkdir mkdirat rmdir unlink unlinkat
  link linkat symlink symlinkat readlink readlinkat chmod fchmod fchmodat fchmodat2 chown fchown lchown
  fchownat getdents getdents64 fcntl ioctl dup dup2 dup3 flock fallocate sendfile copy_file_range splice tee
  vmsplice statfs fstatfs utime utimes utimensat futimesat chdir fchdir getcwd chroot io_setup io_destroy
  io_submit io_cancel io_getevents io_pgetevents io_uring_setup io_uring_enter io_uring_register readahead
  fadvise64 name_to_handle_at open_by_handle_at getxattr lgetxattr fgetxattr setxattr lsetxattr fsetxattr
  listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr inotify_init inotify_init1
  inotify_add_watch inotify_rm_watch fanotify_init fanotify_mark mknod mknodat umask mount umount2
  pivot_root]])
cat("network", [[socket socketpair bind listen accept accept4 connect getsockname getpeername sendto recvfrom
  sendmsg recvmsg sendmmsg recvmmsg shutdown setsockopt getsockopt]])
cat("memory", [[mmap munmap mremap mprotect madvise brk msync mincore mlock mlock2 munlock mlockall munlockall
  remap_file_pages mbind set_mempolicy get_mempolicy migrate_pages move_pages memfd_create memfd_secret
  process_madvise process_mrelease pkey_mprotect pkey_alloc pkey_free userfaultfd membarrier]])
cat("process", [[fork vfork clone clone3 execve execveat exit exit_group wait4 waitid kill tkill tgkill
  getpid getppid gettid getuid geteuid getgid getegid setuid setgid setreuid setregid setresuid setresgid
  getresuid getresgid getpgid setpgid getpgrp getsid setsid getgroups setgroups prctl arch_prctl
  sched_yield sched_setaffinity sched_getaffinity sched_setscheduler sched_getscheduler sched_setparam
  sched_getparam sched_get_priority_max sched_get_priority_min sched_rr_get_interval sched_setattr
  sched_getattr setpriority getpriority set_tid_address set_robust_list get_robust_list rseq
  getrlimit setrlimit prlimit64 getrusage times unshare setns pidfd_open pidfd_send_signal pidfd_getfd
  personality capget capset seccomp ptrace process_vm_readv process_vm_writev kcmp]])
cat("ipc", [[pipe pipe2 futex futex_waitv futex_wait futex_wake futex_requeue eventfd eventfd2 msgget msgsnd
  msgrcv msgctl semget semop semtimedop semctl shmget shmat shmdt shmctl mq_open mq_unlink mq_timedsend
  mq_timedreceive mq_notify mq_getsetattr poll ppoll select pselect6 epoll_create epoll_create1 epoll_ctl
  epoll_wait epoll_pwait epoll_pwait2 signalfd signalfd4 timerfd_create timerfd_settime timerfd_gettime]])
cat("time", [[nanosleep clock_nanosleep clock_gettime clock_settime clock_getres clock_adjtime gettimeofday
  settimeofday time adjtimex alarm getitimer setitimer timer_create timer_settime timer_gettime
  timer_getoverrun timer_delete]])
cat("signal", [[rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait rt_sigqueueinfo
  rt_tgsigqueueinfo rt_sigsuspend sigaltstack pause]])
cat("security", [[keyctl add_key request_key landlock_create_ruleset landlock_add_rule
  landlock_restrict_self]])
cat("system", [[uname sysinfo syslog reboot getrandom sethostname setdomainname acct swapon swapoff
  init_module finit_module delete_module kexec_load kexec_file_load bpf perf_event_open quotactl
  iopl ioperm getcpu]])

--- The category of a syscall name: file_io, network, memory, process,
--- ipc, time, signal, security, system or other.
function M.category(name)
  return CATEGORY[name] or "other"
end

---------------------------------------------------------------------------
-- tracing (the feature: lib/denet/features/syscalls.lua)

local Tracer = {}
Tracer.__index = Tracer
M.Tracer = Tracer

--- The options a tracer takes: latency, per_thread, per_process (without
--- either: totals per syscall only), failed, errno (number), syscalls
--- (list of names), keys (map size), interval (seconds: a report of each
--- interval goes to the run's on_syscalls hook), top (rows of reports).
M.OPTS = { "latency", "per_thread", "per_process", "failed", "errno", "syscalls", "keys", "interval", "top" }

--- The -D flags of opts: what changes the maps (latency histograms, the
--- key, their size); insys.c keeps start times with latency.
function M.plan(opts)
  local f = {}
  if opts.latency then
    f[#f + 1] = "-DDN_SC_LATENCY"
    f[#f + 1] = "-DDN_INSYS_TS"
  end
  if opts.per_thread then
    f[#f + 1] = "-DDN_SC_PER_THREAD"
  elseif not opts.per_process then
    f[#f + 1] = "-DDN_SC_BY_NR"
  end
  if opts.keys then
    f[#f + 1] = "-DDN_SC_KEYS=" .. tonumber(opts.keys)
  end
  return f
end

--- The values of opts for syscalls.c's config map (dn_sc_cfg): the
--- filters, which change from run to run without a new compile.
function M.config(opts)
  return { failed = opts.failed and 1 or 0, err = tonumber(opts.errno) or 0,
    filter = (opts.syscalls and #opts.syscalls > 0) and 1 or 0 }
end

--- Mark the syscalls of opts.syscalls (names) in the in-kernel filter
--- (before the probes are attached).
function M.set_filter(bpf, opts)
  if not (opts.syscalls and #opts.syscalls > 0) then
    return
  end
  local t = bpf:get_table("dn_sc_filter")
  for _, name in ipairs(opts.syscalls) do
    local nr = sysnames.number(name)
    if nr and nr < NRS then
      t:set(nr, 1)
    end
  end
end

--- Counting in the run ctx (its program has syscalls.c), with opts.
function M.new(ctx, opts)
  return setmetatable({ bpf = ctx.bpf, opts = opts, comms = {}, t0 = core.monotonic() }, Tracer)
end

--- A process of the run forked, exec'd or exited: keep its name.
function Tracer:on_process(ev)
  if ev.comm and ev.comm ~= "" then
    self.comms[ev.pid] = ev.comm
  end
end

--- Resolve syscall names ("read,openat") to a list; nil, message for an
--- unknown one.
function M.parse_names(list)
  local out = {}
  for name in list:gmatch("[^,%s]+") do
    if not sysnames.number(name) then
      return nil, string.format("unknown syscall '%s' (denet script syscalls -l lists them)", name)
    end
    out[#out + 1] = name
  end
  return out
end

--- A snapshot of the kernel maps: { entries = { ["tgid:tid:nr"] = { tgid,
--- tid, nr, comm, count, errors, timed, total_ns, max_ns, hist = {}, errs =
--- {[errno] = n} } }, dropped = n }, per-CPU values summed.
function M.snapshot(bpf)
  local entries = {}
  local by_nr = bpf.m:table_info("dn_sc_nr") ~= nil
  local t = bpf:get_table(by_nr and "dn_sc_nr" or "dn_sc")
  -- built with -DDN_SC_LATENCY: the values have a histogram
  local lat = ffi.offsetof(t.leaf.ct, "hist") ~= nil
  for k, vals in t:items() do
    if by_nr then
      k = { tgid = 0, tid = 0, nr = k }
    end
    local e = { tgid = k.tgid, tid = k.tid, nr = k.nr, count = 0, errors = 0, total_ns = 0, max_ns = 0,
      errs = {} }
    for _, v in ipairs(vals) do
      e.count = e.count + tonumber(v.count)
      e.errors = e.errors + tonumber(v.errors)
      local c = ffi.string(v.comm)
      if c ~= "" then
        e.comm = c
      end
      if lat then
        e.timed = (e.timed or 0) + tonumber(v.timed)
        e.total_ns = e.total_ns + tonumber(v.total_ns)
        e.max_ns = math.max(e.max_ns, tonumber(v.max_ns))
        e.hist = e.hist or {}
        for i = 0, M.SLOTS - 1 do
          e.hist[i + 1] = (e.hist[i + 1] or 0) + tonumber(v.hist[i])
        end
      end
    end
    if e.count > 0 then
      entries[k.tgid .. ":" .. k.tid .. ":" .. k.nr] = e
    end
  end
  for k, vals in bpf:get_table("dn_sc_errs"):items() do
    local e = entries[k.tgid .. ":" .. k.tid .. ":" .. k.nr]
    if e then
      local n = 0
      for _, v in ipairs(vals) do
        n = n + tonumber(v)
      end
      e.errs[k.err] = (e.errs[k.err] or 0) + n
    end
  end
  local dropped = tonumber(bpf:get_table("dn_sc_dropped"):sum(0)) or 0
  return { entries = entries, dropped = dropped, latency = lat, t = core.monotonic() }
end

function Tracer:snapshot()
  return M.snapshot(self.bpf)
end

-- cur - prev for the counters (max_ns stays the largest so far)
local function diff(cur, prev)
  if not prev then
    return cur
  end
  local out = { entries = {}, dropped = cur.dropped - prev.dropped, latency = cur.latency, t = cur.t }
  for key, e in pairs(cur.entries) do
    local p = prev.entries[key]
    if not p then
      out.entries[key] = e
    elseif e.count > p.count then
      local d = { tgid = e.tgid, tid = e.tid, nr = e.nr, comm = e.comm, count = e.count - p.count,
        errors = e.errors - p.errors, total_ns = e.total_ns - p.total_ns, max_ns = e.max_ns, errs = {} }
      if e.timed then
        d.timed = e.timed - (p.timed or 0)
      end
      for err, n in pairs(e.errs) do
        if n - (p.errs[err] or 0) > 0 then
          d.errs[err] = n - (p.errs[err] or 0)
        end
      end
      if e.hist then
        d.hist = {}
        for i, n in ipairs(e.hist) do
          d.hist[i] = n - (p.hist and p.hist[i] or 0)
        end
      end
      out.entries[key] = d
    end
  end
  return out
end
M.diff = diff

-- Sum entries into per-syscall rows: { name, nr, count, errors = {ENAME =
-- n}, timed, total_ns, max_ns, hist }, largest count first.
local function rows(entries, latency)
  local by, list = {}, {}
  for _, e in pairs(entries) do
    local r = by[e.nr]
    if not r then
      r = { name = sysnames.name(e.nr), nr = e.nr, count = 0, errors = {}, nerrors = 0 }
      if latency then
        r.timed, r.total_ns, r.max_ns, r.hist = 0, 0, 0, {}
        for i = 1, M.SLOTS do
          r.hist[i] = 0
        end
      end
      by[e.nr] = r
      list[#list + 1] = r
    end
    r.count = r.count + e.count
    r.nerrors = r.nerrors + e.errors
    for err, n in pairs(e.errs) do
      local name = sysnames.errno_name(err)
      r.errors[name] = (r.errors[name] or 0) + n
    end
    if latency and e.hist then
      r.timed = r.timed + (e.timed or 0)
      r.total_ns = r.total_ns + e.total_ns
      r.max_ns = math.max(r.max_ns, e.max_ns)
      for i, n in ipairs(e.hist) do
        r.hist[i] = r.hist[i] + n
      end
    end
  end
  table.sort(list, function(a, b)
    if a.count ~= b.count then
      return a.count > b.count
    end
    return a.nr < b.nr
  end)
  return list
end

local function trim_hist(r)
  if r.hist then
    local last = 0
    for i, n in ipairs(r.hist) do
      if n > 0 then
        last = i
      end
    end
    for i = #r.hist, last + 1, -1 do
      r.hist[i] = nil
    end
    if last == 0 then
      r.hist = nil -- no call timed
    end
  end
  return r
end

--- The report of a snapshot (or of the change since prev): the JSON
--- contract of docs/syscalls.md. opts: top (rows kept, nil: all),
--- per_process, per_thread, duration_us.
function M.report(snap, prev, opts, comms)
  opts = opts or {}
  local d = diff(snap, prev)
  local all = rows(d.entries, d.latency)
  local total, by_category = 0, {}
  for _, r in ipairs(all) do
    total = total + r.count
    local c = M.category(r.name)
    by_category[c] = (by_category[c] or 0) + r.count
  end
  local list = {}
  for i, r in ipairs(all) do
    if opts.top and i > opts.top then
      break
    end
    list[#list + 1] = trim_hist(r)
  end
  local report = {
    kind = "syscalls",
    duration_us = opts.duration_us,
    total = total,
    errors = 0,
    syscalls = list,
    by_category = by_category,
    dropped = d.dropped,
  }
  for _, r in ipairs(all) do
    report.errors = report.errors + r.nerrors
  end
  if opts.per_process or opts.per_thread then
    local groups, glist = {}, {}
    for _, e in pairs(d.entries) do
      local key = opts.per_thread and e.tid or e.tgid
      local g = groups[key]
      if not g then
        g = { pid = e.tgid, tid = opts.per_thread and e.tid or nil, entries = {}, count = 0 }
        groups[key] = g
        glist[#glist + 1] = g
      end
      g.entries[#g.entries + 1] = e
      g.count = g.count + e.count
      g.comm = g.comm or e.comm
    end
    local out = {}
    table.sort(glist, function(a, b)
      return a.count > b.count
    end)
    for _, g in ipairs(glist) do
      local comm = (comms and comms[g.pid]) or g.comm
      local live = core.read_file(string.format("/proc/%d/comm", g.tid or g.pid))
      if live and live ~= "" then
        comm = live:gsub("\n$", "")
      end
      local sc = rows(g.entries, d.latency)
      for i = #sc, (opts.top or #sc) + 1, -1 do
        sc[i] = nil
      end
      for _, r in ipairs(sc) do
        trim_hist(r)
        r.nerrors = nil
      end
      out[#out + 1] = { pid = g.pid, tid = g.tid, comm = comm or "?", count = g.count, syscalls = sc }
    end
    if opts.per_thread then
      report.threads = out
    else
      report.processes = out
    end
  end
  for _, r in ipairs(list) do
    r.nerrors = nil
  end
  return report
end

--- Report of everything counted since start (or since prev, a snapshot
--- an earlier report returned second). opts: top, per_process,
--- per_thread (default: the tracer's).
function Tracer:report(prev, opts)
  opts = opts or { top = self.opts.top, per_process = self.opts.per_process, per_thread = self.opts.per_thread }
  local snap = self:snapshot()
  opts.duration_us = math.floor(((snap.t) - (prev and prev.t or self.t0)) * 1e6)
  return M.report(snap, prev, opts, self.comms), snap
end

--- The report of the calls since the last interval report (or since
--- the start).
function Tracer:interval_report()
  local report, snap = self:report(self.prev_interval)
  self.prev_interval = snap
  return report
end

--- The monitor's per-sample fields (see monitor_fields), from the
--- counts now.
function Tracer:figures()
  local snap = self:snapshot()
  snap.t0 = self.t0
  self.last_snap = snap
  local f = M.monitor_fields(snap, self.prev_figures)
  self.prev_figures = { total = f.total, t = snap.t }
  return f
end

---------------------------------------------------------------------------
-- text

local function fmt_us(ns)
  return string.format("%.3f", ns / 1000)
end

--- bcc-style log2 histogram of ns buckets (slot k: [2^(k-1), 2^k) ns).
function M.histogram(hist, indent)
  indent = indent or "    "
  local max, last = 0, 0
  for i, n in ipairs(hist) do
    if n > max then
      max = n
    end
    if n > 0 then
      last = i
    end
  end
  if max == 0 then
    return ""
  end
  local first = 1
  while first < last and hist[first] == 0 do
    first = first + 1
  end
  local out = { string.format("%s%22s : %-10s %s", indent, "ns", "count", "distribution") }
  for i = first, last do
    local k = i - 1
    local lo = k == 0 and 0 or 2 ^ (k - 1)
    local hi = k == 0 and 0 or 2 ^ k - 1
    local bar = string.rep("*", math.floor(40 * hist[i] / max + 0.5))
    out[#out + 1] = string.format("%s%9.0f -> %-9.0f : %-10d |%-40s|", indent, lo, hi, hist[i], bar)
  end
  return table.concat(out, "\n") .. "\n"
end

local function errors_text(errs)
  local s = {}
  for _, p in ipairs(require("denet.util").by_value(errs)) do
    s[#s + 1] = p[1] .. " " .. p[2]
  end
  return table.concat(s, ", ")
end

local function table_text(list, latency, out)
  if latency then
    out[#out + 1] = string.format("%-22s %10s %8s %12s %10s %12s  %s", "SYSCALL", "COUNT", "ERRORS", "TIME (us)",
      "AVG (us)", "MAX (us)", "ERRNO")
  else
    out[#out + 1] = string.format("%-22s %10s %8s  %s", "SYSCALL", "COUNT", "ERRORS", "ERRNO")
  end
  for _, r in ipairs(list) do
    local nerr = 0
    for _, n in pairs(r.errors) do
      nerr = nerr + n
    end
    if latency then
      out[#out + 1] = string.format("%-22s %10d %8d %12s %10s %12s  %s", r.name, r.count, nerr, fmt_us(r.total_ns),
        fmt_us(r.timed > 0 and r.total_ns / r.timed or 0), fmt_us(r.max_ns), errors_text(r.errors))
    else
      out[#out + 1] = string.format("%-22s %10d %8d  %s", r.name, r.count, nerr, errors_text(r.errors))
    end
  end
end

--- The report as text: totals, the table (per process or thread with -P
--- / --per-thread), and with latency a histogram per syscall.
function M.text(report, latency)
  local out = {}
  out[#out + 1] = string.format("Syscalls over %.2f s: %d calls, %d failed%s", (report.duration_us or 0) / 1e6,
    report.total, report.errors, report.dropped > 0 and string.format(" (%d not counted: maps full)",
      report.dropped) or "")
  local cs = {}
  for _, c in ipairs(require("denet.util").by_value(report.by_category)) do
    cs[#cs + 1] = c[1] .. " " .. c[2]
  end
  if #cs > 0 then
    out[#out + 1] = "By category: " .. table.concat(cs, ", ")
  end
  out[#out + 1] = ""
  local groups = report.processes or report.threads
  if groups then
    for _, g in ipairs(groups) do
      out[#out + 1] = string.format("PID %d%s  %s  %d calls", g.pid, g.tid and (" TID " .. g.tid) or "", g.comm,
        g.count)
      table_text(g.syscalls, latency, out)
      out[#out + 1] = ""
    end
  else
    table_text(report.syscalls, latency, out)
    out[#out + 1] = ""
  end
  if latency then
    for _, r in ipairs(report.syscalls) do
      if r.hist and #r.hist > 0 then
        out[#out + 1] = string.format("%s (%d calls):", r.name, r.count)
        out[#out + 1] = M.histogram(r.hist)
      end
    end
  end
  return table.concat(out, "\n") .. "\n"
end

---------------------------------------------------------------------------
-- the monitor's per-sample fields (aggregated.ebpf.syscalls)

local CPU_CATS = { process = true, time = true, signal = true, system = true }

--- The original denet's shape: total, by_category, top_syscalls, and
--- analysis (rate over the last interval, shares of categories).
--- prev: the previous { total, t } (nil at the first sample).
function M.monitor_fields(snap, prev)
  local rep = M.report(snap, nil, { top = 10 })
  local top = {}
  for i, r in ipairs(rep.syscalls) do
    top[i] = { name = r.name, count = r.count }
  end
  local total = rep.total
  local rate = 0
  if prev and snap.t > prev.t then
    rate = (total - prev.total) / (snap.t - prev.t)
  elseif snap.t0 and snap.t > snap.t0 then
    rate = total / (snap.t - snap.t0)
  end
  local function share(pred)
    if total == 0 then
      return 0
    end
    local n = 0
    for c, v in pairs(rep.by_category) do
      if pred(c) then
        n = n + v
      end
    end
    return math.floor(1000 * n / total + 0.5) / 1000
  end
  return {
    total = total,
    errors = rep.errors,
    by_category = rep.by_category,
    top_syscalls = top,
    analysis = {
      syscall_rate_per_sec = math.floor(rate * 10 + 0.5) / 10,
      io_intensity = share(function(c) return c == "file_io" end),
      memory_intensity = share(function(c) return c == "memory" end),
      network_intensity = share(function(c) return c == "network" end),
      cpu_intensity = share(function(c) return CPU_CATS[c] end),
    },
  }
end

return M
