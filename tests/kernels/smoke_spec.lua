-- The smoke suite of the kernel matrix (tools/kernels/run.sh boots each
-- Debian kernel under qemu and runs this inside): every built-in and
-- example plugin once, on fixtures, asserting figures; kprobes, kretprobes
-- (retprobe=true, through bcc's API too) and fentry where the kernel has
-- them; BTF-true kernel struct reads;
-- denet doctor. Each program is compiled once per kernel (a compile is
-- seconds under TCG).
local _ -- results a test does not look at
local cjson = require("cjson")
local denet = require("denet")
local BPF = require("denet.bpf")
local kernel = require("denet.kernel")

local function within(x, want, frac)
  return math.abs(x - want) <= want * frac
end

local function json_of(args)
  local code, out, err = H.denet(args)
  assert.equals(0, code, err)
  return cjson.decode(out), err
end

local function row(list, name)
  for _, r in ipairs(list) do
    if r.name == name then
      return r
    end
  end
end

describe("on this kernel", function()
  it("denet doctor: BPF works, the headers match the kernel's types", function()
    local code, out = H.denet({ "doctor" })
    assert.equals(0, code, out)
    assert.matches("BPF works here", out)
    assert.matches("✓ headers vs kernel types", out)
    assert.matches("✓ feature task_storage", out)
  end)

  it("denet run: the tree's CPU time, as the kernel's rusage of the same run says", function()
    local o = H.tmpfile(".stats")
    -- busybox time reports the rusage of its child (user and sys)
    local code, _, err = H.denet({ "run", "-q", "--stats", o, "--", "time", H.fixture("spin_children"), "2", "0.5" })
    assert.equals(0, code, err)
    local last = cjson.decode(H.slurp(o))
    assert.equals("summary", last.kind)
    assert.equals(4, last.max_processes) -- time, spin_children and its two children
    local um, us = err:match("user%s+(%d+)m%s*([%d.]+)s")
    local sm, ss = err:match("sys%s+(%d+)m%s*([%d.]+)s")
    local ru = tonumber(um) * 60 + tonumber(us) + tonumber(sm) * 60 + tonumber(ss)
    -- denet's tree also holds `time` itself (its exec, and before it the
    -- code of the held child), which its report leaves out: tens of ms
    -- under qemu's TCG, a few here
    assert.is_true(last.cpu_time_secs >= ru * 0.98 and last.cpu_time_secs <= ru * 1.05 + 0.1,
      string.format("%.3f vs rusage %.3f", last.cpu_time_secs, ru))
  end)

  it("denet attach: perf counters as the kernel's rusage; hardware counters where the machine has a PMU", function()
    -- attached before the fixture starts and stopped before it exits, so
    -- both count the same window: from its start signal to its figures
    -- (denet run's window holds the exec and the exit, which under qemu's
    -- TCG cost a few percent of this)
    local o, out, go, jl, pidf = H.tmpfile(".stats"), H.tmpfile(".txt"), H.tmpfile(".go"), H.tmpfile(".jsonl"),
      H.tmpfile(".pid")
    local code, _, err = H.sh(H.WAIT_SH .. string.format([[
      mkfifo %s
      %s %s %s %s & pid=$!; echo $pid > %s
      %s attach -q -o %s --stats %s $pid & dn=$!
      lines %s 1
      echo x > %s
      lines %s 1
      kill -INT $dn; wait $dn; st=$?
      kill $pid; wait $pid
      exit $st
    ]], go, H.quote(H.fixture("counters")), out, H.tmpfile(".data"), go, pidf, H.quote(H.bin), jl, o, jl, go, out))
    assert.equals(0, code, err)
    local s, meta = cjson.decode(H.slurp(o)), cjson.decode(H.slurp(jl):match("^[^\n]+"))
    local cpu_ns, minflt, majflt, nvcsw, nivcsw = H.slurp(out):match("(%d+) (%d+) (%d+) (%d+) (%d+)")
    local pc = s.perf_counters
    assert.is_true(within(pc.task_clock_ns, tonumber(cpu_ns), 0.02), pc.task_clock_ns .. " vs " .. cpu_ns)
    assert.is_true(within(pc.page_faults_minor, tonumber(minflt), 0.02), pc.page_faults_minor .. " vs " .. minflt)
    assert.is_true(within(pc.page_faults_major, tonumber(majflt), 0.02), pc.page_faults_major .. " vs " .. majflt)
    local cs = tonumber(nvcsw) + tonumber(nivcsw)
    assert.is_true(within(pc.context_switches, cs, 0.02), pc.context_switches .. " vs " .. cs)
    -- (the log says which: qemu's TCG has shown no PMU to its guests)
    local hw = meta.capabilities.perf_hw
    print("hardware counters: " .. (hw.available and "yes" or ("no: " .. tostring(hw.reason))))
    if hw.available then
      assert.is_true(pc.cycles > 0 and pc.instructions > 0 and pc.ipc > 0)
      assert.equals("hardware counters", s.memory_characterization.basis)
    end
  end)

  it("denet run --network: a process's network bytes, exact (the socket syscalls' variant before 6.3)", function()
    local o = H.tmpfile(".stats")
    local code, _, err = H.denet({ "run", "-q", "-o", "/dev/null", "--stats", o, "--network", "--",
      H.fixture("net_bytes"), "10", "1000" })
    assert.equals(0, code, err)
    local n = cjson.decode(H.slurp(o)).ebpf.network
    assert.equals(kernel.has("sock_length") and "socket" or "syscalls", n.source)
    -- UDP and TCP both ways, the peeks and the Unix socket left out
    assert.equals(20000, n.rx_bytes)
    assert.equals(20000, n.tx_bytes)
  end)

  it("denet script offcpu: a program without frame pointers, its stacks whole to _start from the first block",
    function()
      -- (blocks long enough for the process's mappings to be read while it
      -- is blocked, in an emulated guest)
      local r = json_of({ "script", "offcpu", "--json", "--", H.fixture("deep_nofp"), "5", "200" })
      local n = 0
      for _, st in ipairs(r.stacks) do
        if st.category == "sleep" and st.comm == "deep_nofp" then
          local user = table.concat(st.frames, ";"):match("^(.-);%-;")
          -- (glibc's __libc_start_call_main is named by its debug file, which
          -- the image does not have)
          assert.matches("^_start;__libc_start_main;[^;]+;main;level1;level2;level3;__nanosleep;clock_nanosleep$",
            user)
          n = n + st.count
        end
      end
      assert.equals(5, n)
    end)

  it("denet script offcpu: sleeps with their stack, stack reuse verified", function()
    local r = json_of({ "script", "offcpu", "--json", "--stack-reuse", "verify", "--", H.fixture("sleep_loop"), "40",
      "20" })
    local t
    for _, th in ipairs(r.threads) do
      if th.comm == "sleep_loop" then
        t = th
      end
    end
    assert.is_not_nil(t)
    assert.is_true(within(t.by_category.sleep or 0, 800000, 0.15), "sleep " .. tostring(t.by_category.sleep))
    local s = r.stacks[1]
    -- what to look at when it fails: the first stacks, whole
    local seen = {}
    for i = 1, math.min(3, #r.stacks) do
      local st = r.stacks[i]
      seen[i] = string.format("%s %s x%s %.0f us: %s", st.comm, st.category, tostring(st.count), st.us or 0,
        table.concat(st.frames, ";"))
    end
    -- (and the unwinder's counts: walked, copied, stacks of processes gone
    -- before their mappings were read)
    seen = table.concat(seen, "\n") .. "\nunwind: " .. cjson.encode(r.unwind or {})
    assert.equals("__schedule", s.frames[#s.frames], seen)
    local nap = false
    for _, f in ipairs(s.frames) do
      nap = nap or f == "nap"
    end
    assert.is_true(nap, seen)
    assert.is_true(H.blocks_within(r, row(r.syscalls, "clock_nanosleep").blocks, 40))
    -- every sleep's stacks were read (a fault while the program execs is
    -- possible, and said as such), and no stack map trouble
    for _, st in ipairs(r.stacks) do
      if st.category == "sleep" then
        for _, f in ipairs(st.frames) do
          assert.is_nil(f:match("^%[Missed"), f)
        end
      end
    end
    assert.equals(0, r.lost_stacks_why.map_full + r.lost_stacks_why.collided)
    assert.equals(0, r.kstack_reuse.wrong)
    -- user stacks reused too, rightly (every sleep but the first, or
    -- walked before the learner's template was in place: counted; 40
    -- sleeps give an emulated guest on a busy host time to learn), and
    -- glibc's caller recovered from its unwind rules (every sleep but
    -- those before they were learnt: counted)
    local uu = cjson.encode(r.ustack_reuse)
    -- (and blocks before the process's mappings were loaded, unwound from
    -- a copy of the stack)
    local copied = r.unwind and r.unwind.copied or 0
    assert.is_true(r.ustack_reuse.reused + r.ustack_reuse.late + copied >= 39, uu)
    assert.is_true(r.ustack_reuse.reused >= 1, uu)
    assert.equals(0, r.ustack_reuse.wrong)
    local recovered = 0
    for _, st in ipairs(r.stacks) do
      if st.category == "sleep" and table.concat(st.frames, ";"):find(";nap;nap_syscall;", 1, true) then
        recovered = recovered + st.count
      end
    end
    local early = r.leaf_unwind and r.leaf_unwind.before_rules or 0
    local others = {}
    for _, st in ipairs(r.stacks) do
      if st.category == "sleep" and not table.concat(st.frames, ";"):find(";nap;nap_syscall;", 1, true) then
        others[#others + 1] = string.format("x%d: %s", st.count, table.concat(st.frames, ";"))
      end
    end
    assert.is_true(recovered + early + r.lost_stacks >= 40,
      string.format("sleeps with nap_syscall %d, before the rules %d, lost %d; unwind %s; the others:\n%s", recovered,
        early, r.lost_stacks, cjson.encode(r.unwind or {}), table.concat(others, "\n")))
    assert.is_true(recovered >= 1, "sleeps with nap_syscall: " .. recovered)
  end)

  it("denet script offcpu: threads blocked before tracing, and --now", function()
    local out = H.tmpfile(".out")
    local p = denet.spawn({ H.fixture("blocked_now"), "300" }, { stdout = out }):resume()
    -- (the image has busybox's sh, not bash)
    H.sh("sh -c " .. H.quote(H.WAIT_SH .. "lines " .. H.quote(out) .. " 3"))
    local tid, since = H.slurp(out):match("blocked locker (%d+) (%S+)")
    assert.is_not_nil(tid, H.slurp(out))
    H.sh("sh -c " .. H.quote(H.WAIT_SH .. string.format("state %d/task/%s S", p.pid, tid)))
    local core = require("denet.core")
    local before = core.monotonic()
    local r = json_of({ "script", "offcpu", "--now", "--json", "-p", tostring(p.pid) })
    local after = core.monotonic()
    local t = H.by_tid(r.threads)[tonumber(tid)]
    assert.is_not_nil(t)
    assert.equals("lock", t.category)
    assert.matches("wait_lock%(%)", t.site)
    local lo, hi = (before - tonumber(since)) * 1e6, (after - tonumber(since)) * 1e6
    assert.is_true(t.blocked_for_us >= 0.9 * lo and t.blocked_for_us <= 1.1 * hi,
      string.format("blocked for %d us, truth %d..%d", t.blocked_for_us, lo, hi))
    r = json_of({ "script", "offcpu", "--json", "-d", "1", "-p", tostring(p.pid) })
    t = H.by_tid(r.threads)[tonumber(tid)]
    assert.is_not_nil(t)
    assert.is_true((t.by_category.lock or 0) >= 0.99 * t.wall_us, "lock " .. tostring(t.by_category.lock))
    p:kill()
    p:wait()
  end)

  it("denet script offcpu: a Python program's functions and lines, as its own sys._current_frames()", function()
    local out = H.tmpfile(".json")
    local r = json_of({ "script", "offcpu", "--json", "--", "/usr/bin/python3", H.fixture("blocking.py"), out })
    local want = cjson.decode((H.slurp(out)))
    local n = 0
    for tid, stack in pairs(want) do
      local best
      for _, s in ipairs(r.stacks) do
        if s.tid == tonumber(tid) and (not best or s.us > best.us) then
          best = s
        end
      end
      assert.is_not_nil(best, "no stack of tid " .. tid)
      assert.same(stack, H.py_frames(best.frames), table.concat(best.frames, ";"))
      n = n + 1
    end
    assert.equals(5, n)
  end)

  it("denet script syscalls -L: exact counts and the latency bucket", function()
    local r = json_of({ "script", "syscalls", "--json", "-L", "-T", "50", "--", H.fixture("syscall_mix") })
    assert.equals(102500, row(r.syscalls, "getppid").count)
    assert.equals(5000, row(r.syscalls, "write").count)
    assert.equals(777, row(r.syscalls, "openat").errors.ENOENT)
    -- hist[k] (0-based in JSON) counts [2^(k-1), 2^k) ns: 100 ms in [2^26, 2^27)
    local ns = row(r.syscalls, "nanosleep")
    assert.equals(1, ns.hist[28])
  end)

  it("example plugins: slow-syscalls, mem-growth, func-latency, io-by-file, cswitch", function()
    local code, out = H.denet({ "script", "slow-syscalls", "--threshold-ms", "20", "--", H.fixture("sleep_loop"), "3",
      "30" })
    assert.equals(0, code)
    -- the three naps (under emulation the exec may take 20 ms too)
    local naps = select(2, out:gsub("clock_nanosleep = 0", ""))
    assert.equals(3, naps, out)
    assert.matches("slow%-syscalls: %d+ calls of 20 ms or more", out)
    local err
    code, _, err = H.denet({ "run", "-q", "--plugin", "mem-growth:limit_mib_s=50", "--", H.fixture("mem_grow"), "20",
      "10", "100" })
    assert.equals(0, code)
    assert.matches("mem%-growth: RSS grew", err)
    code, out = H.denet({ "script", "func-latency", "--func", "dn_target_fn", "--", H.fixture("ufunc"), "500" })
    assert.equals(0, code)
    assert.matches("dn_target_fn: 500 calls", out)
    local f = H.tmpfile(".dat")
    code, out = H.denet({ "script", "io-by-file", "--", H.fixture("write_fsync"), f, "2" })
    assert.equals(0, code)
    local wr = out:match("%d+%s+(%d+)%s+%d+%s+%d+%s+" .. f:gsub("%p", "%%%0"))
    assert.equals(2097152, tonumber(wr))
    code, _, err = H.denet({ "script", "cswitch", "--", H.fixture("sleep_loop"), "5", "10" })
    assert.equals(0, code)
    assert.matches("VOLUNTARY", err)
  end)

  it("kprobe__ and kretprobe__ auto-attach, attach_kprobe, and fentry count every call", function()
    local n = 7
    local p = denet.spawn({ H.fixture("sleep_loop"), tostring(n), "5" })
    if not kernel.has("kprobes") then
      local ok, e = pcall(BPF.new, { text = "int kprobe__do_nanosleep(void *ctx) { return 0; }" })
      assert.is_false(ok)
      assert.matches("this kernel has no kprobes", tostring(e.message or e))
      p:resume()
      p:wait()
      return
    end
    local b = BPF.new{ text = string.format([[
BPF_ARRAY(n, u64, 4);
static int count(int i) {
  if ((bpf_get_current_pid_tgid() >> 32) == %d) n.increment(i);
  return 0;
}
int kprobe__do_nanosleep(void *ctx) { return count(0); }
int kretprobe__do_nanosleep(void *ctx) { return count(1); }
int by_hand(void *ctx) { return count(2); }
KFUNC_PROBE(do_nanosleep) { return count(3); }
]], p.pid), autoattach = false }
    b:attach_kprobe{ event = "do_nanosleep", fn_name = "kprobe__do_nanosleep" }
    b:attach_kretprobe{ event = "do_nanosleep", fn_name = "kretprobe__do_nanosleep" }
    b:attach_kprobe{ event = "do_nanosleep", fn_name = "by_hand" }
    local fentry = kernel.has("fentry")
    if fentry then
      b:attach_kfunc{ fn_name = "kfunc__do_nanosleep" }
    end
    p:resume()
    assert.equals(0, p:wait())
    local t = b:get_table("n")
    assert.equals(n, tonumber(t:get(0)))
    assert.equals(n, tonumber(t:get(1)))
    assert.equals(n, tonumber(t:get(2)))
    assert.equals(fentry and n or 0, tonumber(t:get(3)))
    b:close()
    -- and by name, as bcc attaches them
    p = denet.spawn({ H.fixture("sleep_loop"), "3", "5" })
    b = BPF.new{ text = string.format([[
BPF_ARRAY(n, u64, 2);
int kprobe__do_nanosleep(void *ctx) { if ((bpf_get_current_pid_tgid() >> 32) == %d) n.increment(0); return 0; }
int kretprobe__do_nanosleep(void *ctx) { if ((bpf_get_current_pid_tgid() >> 32) == %d) n.increment(1); return 0; }
]], p.pid, p.pid) }
    p:resume()
    p:wait()
    assert.equals(3, tonumber(b:get_table("n"):get(0)))
    assert.equals(3, tonumber(b:get_table("n"):get(1)))
    b:close()
  end)

  it("retprobe=true reads the return value: getppid's, through denet's API and bcc's", function()
    if not kernel.has("kprobes") then
      return
    end
    local n = 5
    local me = require("denet.core").ids().pid
    local fn = "__x64_sys_getppid"
    local text = [[
#include <uapi/linux/ptrace.h>
BPF_ARRAY(acc, u64, 2);
int on_ret(struct pt_regs *ctx) {
  if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
  int k = 0; u64 *v = acc.lookup(&k); if (v) *v += 1;
  k = 1; v = acc.lookup(&k); if (v) *v += PT_REGS_RC(ctx);
  return 0;
}]]
    local p = denet.spawn({ H.fixture("getppid_n"), tostring(n) }, { stdout = "null" })
    local b = BPF.new{ text = (text:gsub("PID", tostring(p.pid))) }
    b:attach_kprobe{ event = fn, fn_name = "on_ret", retprobe = true }
    p:resume()
    assert.equals(0, p:wait())
    assert.equals(n, tonumber(b:get_table("acc"):get(0)))
    assert.equals(n * me, tonumber(b:get_table("acc"):get(1)))
    b:close()
    local BCC = require("bcc")
    p = denet.spawn({ H.fixture("getppid_n"), tostring(n) }, { stdout = "null" })
    local bb = BCC.BPF:new{ text = (text:gsub("PID", tostring(p.pid))) }
    bb:attach_kprobe{ event = fn, fn_name = "on_ret", retprobe = true }
    assert.equals(1, BCC.BPF.num_open_kprobes())
    p:resume()
    assert.equals(0, p:wait())
    assert.equals(n * me, tonumber(bb:get_table("acc"):get(1)))
    BCC.BPF.cleanup()
  end)

  it("kernel structs read as the kernel lays them out: task_struct against the tracepoint's fields", function()
    local b = BPF.new{ text = [[
#include <linux/sched.h>
BPF_ARRAY(n, u64, 2); /* [0] agreed, [1] disagreed */
TRACEPOINT_PROBE(sched, sched_switch) {
  struct task_struct *prev = (struct task_struct *)bpf_get_current_task();
  char comm[16] = {};
  bpf_probe_read_kernel_str(comm, sizeof(comm), prev->comm);
  int same = prev->pid == args->prev_pid;
  for (int i = 0; i < 16; i++) {
    if (comm[i] != args->prev_comm[i]) same = 0;
    if (!comm[i]) break;
  }
  n.increment(same ? 0 : 1);
  return 0;
}
]] }
    local t = b:get_table("n")
    local t0 = require("denet.core").monotonic()
    repeat
      denet.sleep(0.1)
    until tonumber(t:get(0)) >= 20 or require("denet.core").monotonic() - t0 > 10
    assert.is_true(tonumber(t:get(0)) >= 20, "agreed " .. tostring(t:get(0)))
    assert.equals(0, tonumber(t:get(1)))
    b:close()
  end)
end)
