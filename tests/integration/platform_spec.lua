-- Right on every kernel: each fallback forced on (DENET_DISABLE) gives the
-- same figures; kernel structs are read as the running kernel lays them
-- out, or refused in one line; stacks and counts stay the same beside other
-- tracers (a second denet, bpftrace, an enabled ftrace event); plugins
-- built on the tracked tree follow it. (The kernel matrix itself boots
-- other kernels: tests/kernels, make test-kernels.)
local cjson = require("cjson")
local denet = require("denet")
local core = require("denet.core")

local function row(list, name)
  for _, r in ipairs(list) do
    if r.name == name then
      return r
    end
  end
end


local function json_of(args, env)
  local code, out, err = H.denet(args, env)
  assert.equals(0, code, err)
  return cjson.decode(out), err
end

local function lines(s)
  local t = {}
  for l in s:gmatch("[^\n]+") do
    t[#t + 1] = l
  end
  return t
end

-- the syscall_mix fixture's exact figures
local function assert_mix(r)
  assert.equals(102500, row(r.syscalls, "getppid").count)
  assert.equals(5000, row(r.syscalls, "write").count)
  assert.equals(777, row(r.syscalls, "openat").errors.ENOENT)
end

-- sleep_loop 10 50 FILE: 500 ms asleep in 10 blocks in nap() (FILE: how
-- long they took, as the fixture's clock saw them), __schedule the leaf
local function assert_sleeps(r, took)
  local t
  for _, th in ipairs(r.threads) do
    if th.comm == "sleep_loop" then
      t = th
    end
  end
  assert.is_not_nil(t)
  assert.is_true(H.sleeps_within(r, t.by_category.sleep or 0, tonumber(H.slurp(took)), 50000))
  assert.is_true(H.blocks_within(r, row(r.syscalls, "clock_nanosleep").blocks, 10))
  local s = r.stacks[1]
  assert.equals("__schedule", s.frames[#s.frames])
  local nap = false
  for _, f in ipairs(s.frames) do
    nap = nap or f == "nap"
    assert.is_false(require("denet.syms").is_tracing_frame(f), f)
  end
  assert.is_true(nap)
end

describe("features forced off (DENET_DISABLE)", function()
  local ALL = "DENET_DISABLE=task_storage,task_pt_regs,ringbuf,batch,btf "

  it("syscalls: the same exact counts and latency bucket, one line per fallback", function()
    local r, err = json_of({ "script", "syscalls", "--json", "-L", "-T", "50", "--", H.fixture("syscall_mix") }, ALL)
    assert_mix(r)
    assert.equals(1, row(r.syscalls, "nanosleep").hist[28])
    local l = lines(err)
    assert.equals(2, #l, err)
    assert.equals("denet: DENET_DISABLE turns off the BPF ring buffer (ringbuf): process events come through a "
      .. "perf buffer", l[1])
    assert.equals("denet: DENET_DISABLE turns off task storage and bpf_get_current_task_btf (task_storage): the "
      .. "syscall each thread is in is kept in a hash by thread id", l[2])
  end)

  it("offcpu: the same sleeps and stacks without task storage, stack reuse, ring buffer or BTF", function()
    local took = H.tmpfile(".us")
    local r, err = json_of({ "script", "offcpu", "--json", "--", H.fixture("sleep_loop"), "10", "50", took }, ALL)
    assert_sleeps(r, took)
    assert.is_nil(r.kstack_reuse)
    assert.matches("no stack reuse", err)
    assert.matches("kernel threads cannot be told apart", err)
  end)

  it("the monitor: the same tree and CPU time with events by perf buffer and maps read key by key", function()
    local o, tf = H.tmpfile(".stats"), H.tmpfile(".time")
    local code, _, err = H.denet({ "run", "-q", "--stats", o, "--", "/usr/bin/time", "-f", "%U %S", "-o", tf,
      H.fixture("fork_burn"), "4", "100" }, "DENET_DISABLE=ringbuf,batch ")
    assert.equals(0, code, err)
    local last = cjson.decode(H.slurp(o))
    -- time, fork_burn and its children, one after another
    assert.equals(3, last.max_processes)
    local u, sy = H.slurp(tf):match("([%d.]+) ([%d.]+)")
    local ru = tonumber(u) + tonumber(sy)
    assert.is_true(math.abs(last.cpu_time_secs - ru) <= 0.05 * ru + 0.02,
      string.format("%.3f vs rusage %.3f", last.cpu_time_secs, ru))
  end)

  it("an unknown name is one line", function()
    local code, _, err = H.denet({ "script", "syscalls", "--json", "--", "true" }, "DENET_DISABLE=ringbuf,nosuch ")
    assert.equals(0, code)
    assert.matches("denet: DENET_DISABLE: no feature named 'nosuch' %(known: btf, raw_tracepoint, batch", err)
  end)
end)

describe("kernel structs", function()
  local PROG = [[
#include <linux/sched.h>
struct seen { u32 pid, tgid, ppid; };
BPF_HASH(res, u32, struct seen);
BPF_ARRAY(n, u64, 2); /* [0] agreed with the tracepoint, [1] disagreed */
BPF_ARRAY(total_vm, u64, 2); /* the sleeper's mm->total_vm (pages) and mm->map_count */
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
  struct seen s = {};
  s.pid = prev->pid;
  s.tgid = prev->tgid;
  s.ppid = prev->real_parent->tgid;
  if (s.tgid == SLEEPER) {
    u64 vm = prev->mm->total_vm, maps = prev->mm->map_count;
    u32 z = 0, one = 1;
    total_vm.update(&z, &vm);
    total_vm.update(&one, &maps);
  }
  u32 k = s.pid;
  res.update(&k, &s);
  return 0;
}
]]

  it("read as the running kernel lays them out: against the tracepoint's fields and /proc", function()
    -- prev->pid, prev->comm, prev->real_parent->tgid, prev->mm->total_vm
    local ktypes = require("denet.ktypes")
    -- the machine this suite runs on has another kernel's headers
    assert.is_true(ktypes.mismatch(), "headers " .. tostring(ktypes.headers_release()))
    local s = H.script(string.format([[
local BPF = require("denet.bpf")
local denet = require("denet")
local core = require("denet.core")
-- a process whose memory does not move: its mm->total_vm against /proc
local p = denet.spawn({ %q, "30" })
local b = BPF.new{ text = %q, cflags = { "-DSLEEPER=" .. p.pid } }
p:resume()
local n = b:get_table("n")
local t0 = core.monotonic()
-- until it sleeps (its last switch-out has then been seen) and enough
-- switches were compared
repeat denet.sleep(0.05) until (tonumber(n:get(0)) >= 50 and select(4, core.read_stat(p.pid)) == 83)
  or core.monotonic() - t0 > 10
denet.sleep(0.05)
local vmsize = tonumber(core.read_file("/proc/" .. p.pid .. "/status"):match("VmSize:%%s*(%%d+)"))
local maps = 0
for l in core.read_file("/proc/" .. p.pid .. "/maps", 1048576):gmatch("[^\n]+") do
  maps = maps + (l:find("vsyscall", 1, true) and 0 or 1)
end
local vm = b:get_table("total_vm")
local vm_ok = tonumber(vm:get(0)) * 4 == vmsize and tonumber(vm:get(1)) == maps
p:kill(denet.SIGKILL)
p:wait()
local good, bad = 0, 0
for k, v in b:get_table("res"):items() do
  local st = core.read_file("/proc/" .. k .. "/status")
  if st then
    if tonumber(st:match("Tgid:%%s*(%%d+)")) == v.tgid and tonumber(st:match("PPid:%%s*(%%d+)")) == v.ppid then
      good = good + 1
    else
      bad = bad + 1
    end
  end
end
print(tonumber(n:get(0)), tonumber(n:get(1)), good, bad, vm_ok)
]], H.fixture("sleeper"), PROG))
    local code, out, err = H.denet({ "script", s })
    assert.equals(0, code, err)
    local agreed, disagreed, good, bad, vm = out:match("^(%d+)\t(%d+)\t(%d+)\t(%d+)\t(%a+)")
    -- mm->total_vm x 4 KiB is the sleeper's VmSize, mm->map_count its mappings
    assert.equals("true", vm, out)
    assert.is_true(tonumber(agreed) >= 50, out)
    assert.equals(0, tonumber(disagreed))
    assert.is_true(tonumber(good) >= 1, out)
    assert.equals(0, tonumber(bad))
  end)

  it("where the kernel's types cannot be used, a mismatch is one line naming the struct", function()
    local s = H.script(string.format("require('denet.bpf').new{ text = %q, cflags = { '-DSLEEPER=1' } }", PROG))
    local code, out, err = H.denet({ "script", s }, "DENET_DISABLE=btf_types ")
    assert.equals(2, code)
    assert.equals("", out)
    assert.equals(1, #lines(err), err)
    assert.matches("^denet: " .. s:gsub("%p", "%%%0") .. ":1: BPF program bpf%.c reads struct task_struct, "
      .. "whose layout in the installed kernel "
      .. "headers %(6%.1[^)]*%) is not the running kernel's %(" .. core.uname().release:gsub("%p", "%%%0")
      .. "%): field [%w_]+ is at byte %d+ in this kernel; fix: install the headers of the running kernel", err)
  end)

  it("denet doctor compares the headers with the kernel's BTF", function()
    local code, out = H.denet({ "doctor" })
    assert.equals(0, code)
    assert.matches("✓ headers vs kernel types +the headers %(6%.1[^)]*%) are not this kernel's %([^)]+%): "
      .. "task_struct%.pid at byte %d+ in the kernel", out)
    code, out = H.denet({ "doctor" }, "DENET_DISABLE=btf_types ")
    -- BPF still works: a mismatch is a warning
    assert.equals(0, code)
    assert.matches("✗ headers vs kernel types .* fix: install the headers of the running kernel", out)
  end)
end)

-- Start a tracer in the background and wait until its programs are
-- attached; returns a function that stops it.
local function beside(cmdline)
  local pidfile = H.tmpfile(".pid")
  os.execute(string.format("(exec %s >/dev/null 2>&1) & echo $! > %s", cmdline, pidfile))
  local pid = tonumber(H.slurp(pidfile))
  -- stopped whatever happens: Ctrl-C, then SIGKILL if it is still there
  local function stop()
    os.execute("kill -INT " .. pid .. " 2>/dev/null")
    local t1 = core.monotonic()
    while core.read_stat(pid) and core.monotonic() - t1 < 10 do
      denet.sleep(0.05)
    end
    os.execute("kill -KILL " .. pid .. " 2>/dev/null")
  end
  if not H.wait_attached(pid) then
    stop()
    error(cmdline .. ": never attached")
  end
  return stop
end

describe("beside other tracers", function()
  it("the same stacks with an ftrace event on sched_switch: no tracing frame, __schedule the leaf", function()
    local en = require("denet.sys").tracefs() .. "/events/sched/sched_switch/enable"
    H.write(en, "1")
    local took = H.tmpfile(".us")
    local ok, r = pcall(json_of, { "script", "offcpu", "--json", "--", H.fixture("sleep_loop"), "10", "50", took })
    H.write(en, "0")
    assert.is_true(ok, tostring(r))
    assert_sleeps(r, took)
  end)

  it("the same counts and stacks while a second denet and bpftrace trace the same events", function()
    local stop1 = beside(H.quote(H.bin) .. " script offcpu -d 120")
    local ok2, stop2 = pcall(beside, "bpftrace -e 'tracepoint:raw_syscalls:sys_enter { @[comm] = count(); }'")
    if not ok2 then
      stop1()
      error(stop2, 0)
    end
    local ok, err = pcall(function()
      assert_mix((json_of({ "script", "syscalls", "--json", "-T", "50", "--", H.fixture("syscall_mix") })))
      local took = H.tmpfile(".us")
      assert_sleeps((json_of({ "script", "offcpu", "--json", "--", H.fixture("sleep_loop"), "10", "50", took })), took)
    end)
    stop2()
    stop1()
    assert.is_true(ok, tostring(err))
  end)
end)

describe("plugins on the tracked tree", function()
  it("follow forks, drop processes that exit, and see descendants that exist at -p attach", function()
    local tree = require("denet.tree")
    local p = denet.spawn({ H.fixture("fork_burn"), "5", "20" })
    local t = tree.for_plugin({ pid = p.pid }, { name = "test", text = { { name = "test", text = [[
BPF_ARRAY(seen, u64, 1);
TRACEPOINT_PROBE(raw_syscalls, sys_enter) {
  u64 id = bpf_get_current_pid_tgid();
  if (dn_maybe_watched((u32)id) && dn_wanted(id >> 32, (u32)id)) seen.increment(0);
  return 0;
}
]] } } })
    local forks, exits = 0, 0
    t.on_event = function(ev)
      forks = forks + (ev.kind == "fork" and 1 or 0)
      exits = exits + (ev.kind == "exit" and 1 or 0)
    end
    p:resume()
    assert.equals(0, p:wait())
    local t0 = core.monotonic()
    repeat
      denet.sleep(0.05)
    until exits >= 6 or core.monotonic() - t0 > 5
    assert.equals(5, forks)
    assert.equals(6, exits)
    assert.equals(0, t.tracked:len()) -- nothing exited stays in the set
    assert.is_true(tonumber(t.bpf:get_table("seen"):get(0)) > 10) -- the plugin's probe saw the tree
    t:close()

    -- -p attach: a child that exists before (stopped), then reads a file
    local f = H.write(H.tmpfile(".dat"), string.rep("x", 300000))
    local parent = io.popen(string.format([[sh -c 'sh -c "kill -STOP \$\$; exec %s %s" & wait' & echo $!]],
      H.fixture("read_file"), f))
    local ppid = tonumber(parent:read("*l"))
    local child
    local t1 = core.monotonic()
    repeat
      denet.sleep(0.02)
      local _, c = H.sh("pgrep -P " .. ppid)
      child = tonumber(c)
      local state = child and select(4, core.read_stat(child))
    until (child and state == string.byte("T")) or core.monotonic() - t1 > 10
    assert.is_not_nil(child)
    local out = H.tmpfile(".out")
    local bg = io.popen(string.format("(exec %s script io-by-file -p %d > %s 2>&1) & echo $!; wait; echo done",
      H.quote(H.bin), ppid, out))
    -- its ten syscall programs attached: then let the child go
    assert.is_true(H.wait_attached(tonumber(bg:read("*l")), 10))
    os.execute("kill -CONT " .. child)
    assert.equals("done", bg:read("*l"))
    bg:close()
    parent:close()
    local text = H.slurp(out)
    local rd, _, reads = text:match("(%d+)%s+(%d+)%s+(%d+)%s+%d+%s+" .. f:gsub("%p", "%%%0"))
    assert.equals(300000, tonumber(rd), text) -- read by the child that existed at attach
    assert.equals(5, tonumber(reads), text)
  end)
end)
