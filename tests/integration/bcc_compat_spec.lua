-- bcc's Lua binding (require "bcc") on denet: the behaviours of bcc's own
-- tests and examples, ported to fixtures with known numbers.
local ffi = require("ffi")
local denet = require("denet")
local sys = require("denet.sys")
local BCC = require("bcc")
local BPF = BCC.BPF

pcall(ffi.cdef, "int getpid(void);")

-- ufunc K calls dn_target_fn(i) for i = 0..K-1; it returns 2i+1
local K = 100

local function run(argv, opts)
  local p = denet.spawn(argv, opts)
  return p, function()
    p:resume()
    return p:wait()
  end
end

-- a FIFO the usdt_probe fixture reads a byte from, before firing and
-- before exiting
local function fifo()
  local path = H.tmpfile(".fifo")
  assert(os.execute("mkfifo " .. path) == 0)
  return path
end

-- the ELF address of sym in file, as nm prints it
local function nm(file, sym)
  local _, out = H.sh("(nm -D --defined-only " .. H.quote(file) .. "; nm " .. H.quote(file) .. ") 2>/dev/null")
  for line in out:gmatch("[^\n]+") do
    local addr, name = line:match("^(%x+) %a (%S+)$")
    if name == sym or (name and name:match("^" .. sym .. "@")) then
      return tonumber(addr, 16)
    end
  end
end

describe("bcc's BPF class", function()
  after_each(function()
    BPF.cleanup()
  end)

  it("is what require('bcc') and require('bcc.init') give, with bcc's helpers", function()
    assert.equals(BPF, require("bcc.init").BPF)
    assert.equals("0x2a", "0x%x" % 42)
    assert.equals("a-7", "%s-%d" % { "a", 7 })
    assert.is_true(("abc"):starts("ab"))
    assert.is_true(("abc"):ends("bc"))
    assert.equals(3, table.count({ a = 1, b = 2, 3 }))
    assert.same({ "a", "b", "c" }, ("a b  c"):split())
    assert.is_function(log.info)
  end)

  it("constructs with BPF:new{}, BPF{} and BPF.new(BPF, {}), and loads functions as bcc does", function()
    local text = "int entry(void *ctx) { return 1; }\nint other(void *ctx) { return 0; }"
    for _, b in ipairs({ BPF:new{ text = text, debug = 0 }, BPF{ text = text }, BPF.new(BPF, { text = text }) }) do
      local fn = b:load_func("entry", "BPF_PROG_TYPE_KPROBE")
      assert.equals(b, fn.bpf)
      assert.equals("entry", fn.name)
      assert.is_true(fn.fd > 0)
      -- loaded once
      assert.equals(fn, b:load_func("entry", "BPF_PROG_TYPE_KPROBE"))
      local all = b:load_funcs("BPF_PROG_TYPE_KPROBE")
      assert.equals(2, #all)
      assert.equals("other", all[2].name)
    end
  end)

  it("dumps a function's instructions: mov r0, 1; exit", function()
    local b = BPF:new{ text = "int entry(void) { return 1; }" }
    assert.equals("\xb7\x00\x00\x00\x01\x00\x00\x00\x95\x00\x00\x00\x00\x00\x00\x00", b:dump_func("entry"))
  end)

  it("raises strings: 'failed to compile BPF module', 'unknown program', unknown options", function()
    local ok, err = pcall(BPF.new, BPF, { text = "int failure(void *ctx) { if (); return 0; }" })
    assert.is_false(ok)
    assert.equals("string", type(err))
    assert.truthy(err:find("failed to compile BPF module", 1, true))
    local b = BPF:new{ text = "int entry(void *ctx) { return 1; }" }
    ok, err = pcall(b.load_func, b, "nope", "BPF_PROG_TYPE_KPROBE")
    assert.is_false(ok)
    assert.equals("string", type(err))
    assert.truthy(err:find("unknown program: nope", 1, true))
    ok, err = pcall(BPF.new, BPF, { text = "int f(void *c) { return 0; }", usdtt = 1 })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("BPF:new: unknown option 'usdtt'", 1, true))
    ok, err = pcall(b.attach_uprobe, b, { name = "c", sym = "getpid", fn_name = "entry", retprobes = true })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("attach_uprobe: unknown option 'retprobes'", 1, true))
  end)

  it("gives nil for a table the program does not have", function()
    local b = BPF:new{ text = "BPF_HASH(h, u32, u64);" }
    assert.is_nil(b:get_table("missing"))
    assert.is_not_nil(b:get_table("h"))
  end)

  it("attach_uprobe with retprobe=true reads the real return value (sum of 2i+1 = K*K)", function()
    local b = BPF:new{ text = [[
#include <uapi/linux/ptrace.h>
BPF_ARRAY(acc, u64, 2);
int on_entry(struct pt_regs *ctx) { int k = 0; u64 *v = acc.lookup(&k); if (v) *v += 1; return 0; }
int on_return(struct pt_regs *ctx) { int k = 1; u64 *v = acc.lookup(&k); if (v) *v += PT_REGS_RC(ctx); return 0; }
]] }
    local p, go = run({ H.fixture("ufunc"), tostring(K) })
    b:attach_uprobe{ name = H.fixture("ufunc"), sym = "dn_target_fn", fn_name = "on_entry", pid = p.pid }
    b:attach_uprobe{ name = H.fixture("ufunc"), sym = "dn_target_fn", fn_name = "on_return", pid = p.pid,
      retprobe = true }
    assert.equals(2, BPF.num_open_uprobes())
    assert.equals(0, go())
    local acc = b:get_table("acc")
    assert.equals(K, tonumber(acc:get(0)))
    assert.equals(K * K, tonumber(acc:get(1)))
    BPF.cleanup()
    assert.equals(0, BPF.num_open_uprobes())
    assert.equals(0, BPF.num_open_kprobes())
  end)

  it("attaches to a library by short name and an ELF address", function()
    local libc = require("denet.core").resolve_symname("c", "getpid", -1)
    local addr = nm(libc, "getpid")
    assert.is_number(addr)
    local b = BPF:new{ text = ([[
BPF_ARRAY(calls, u64, 1);
int count(void *ctx) {
  if ((u32)bpf_get_current_pid_tgid() != PID) return 0;
  int k = 0; u64 *v = calls.lookup(&k); if (v) *v += 1; return 0;
}]]):gsub("PID", tostring(ffi.C.getpid())) }
    b:attach_uprobe{ name = "c", addr = addr, fn_name = "count" }
    for _ = 1, 7 do
      ffi.C.getpid()
    end
    assert.equals(7, tonumber(b:get_table("calls"):get(0)))
  end)

  it("probes the implementation an IFUNC picked (glibc's strlen), not its resolver", function()
    pcall(ffi.cdef, "size_t strlen(const char *s);")
    local mark = "denet-ifunc-mark"
    local addr = tonumber(ffi.cast("uintptr_t", ffi.cast("const char *", mark)))
    local b = BPF:new{ text = ([[
#include <uapi/linux/ptrace.h>
BPF_ARRAY(calls, u64, 1);
int count(struct pt_regs *ctx) {
  if (PT_REGS_PARM1(ctx) != ADDRULL) return 0;
  int k = 0; u64 *v = calls.lookup(&k); if (v) *v += 1; return 0;
}]]):gsub("ADDR", string.format("%d", addr)) }
    b:attach_uprobe{ name = "c", sym = "strlen", fn_name = "count", pid = ffi.C.getpid() }
    for _ = 1, 10 do
      assert.equals(#mark, tonumber(ffi.C.strlen(mark)))
    end
    assert.equals(10, tonumber(b:get_table("calls"):get(0)))
  end)

  it("iterates arrays by value (items(true): 1-based index) and hashes by key and value", function()
    local b = BPF:new{ text = "BPF_ARRAY(arr, u32, 4); BPF_HASH(h, u32, u64, 16);" }
    local arr, h = b:get_table("arr"), b:get_table("h")
    for i = 0, 3 do
      arr:set(i, 10 * (i + 1))
    end
    local vals = {}
    for v in arr:items() do
      vals[#vals + 1] = v
    end
    assert.same({ 10, 20, 30, 40 }, vals)
    local idx = {}
    for i, v in arr:items(true) do
      idx[i] = v
    end
    assert.same({ 10, 20, 30, 40 }, idx)
    assert.equals(40, arr:get(-1))
    assert.equals(4, arr:size())
    assert.has_error(function()
      arr:get(4)
    end)
    assert.has_error(function()
      arr:delete(0)
    end)
    h:set(5, 500)
    h:set(6, 600)
    local seen = {}
    for k, v in h:items() do
      seen[k] = tonumber(v)
    end
    assert.same({ [5] = 500, [6] = 600 }, seen)
    local keys = {}
    for k in h:keys() do
      keys[#keys + 1] = k
    end
    table.sort(keys)
    assert.same({ 5, 6 }, keys)
    assert.equals(2, h:size())
    assert.is_true(h:delete(5))
    assert.is_nil(h:get(5))
    assert.equals(600, tonumber(h:get(6)))
  end)

  it("prints and parses keys and leaves as libbcc does, with c_key and c_leaf types", function()
    local b = BPF:new{ text = "BPF_HASH(stats, int, struct { u32 a[3]; u32 b; }, 10);"
      .. "BPF_HASH(st2, int, struct { u64 a; u64 b; u32 c:18; u32 d:14; struct { u32 a; u32 b; } s; }, 10);" }
    local t = b:get_table("stats")
    assert.equals("0x2", t:key_sprintf(2))
    assert.equals(2, t:key_scanf("0x2"))
    local s = t:leaf_sprintf({ { { 1, 2, 3 }, 4 } })
    assert.equals("{ [ 0x1 0x2 0x3 ] 0x4 }", s)
    local l = t:leaf_scanf(s)
    assert.same({ 1, 2, 3, 4 }, { l.a[0], l.a[1], l.a[2], l.b })
    assert.equals(4, ffi.sizeof(t.c_key))
    assert.equals(16, ffi.sizeof(t.c_leaf))
    local t2 = b:get_table("st2")
    local l2 = t2:leaf_scanf(t2:leaf_sprintf({ { 2, 3, 4, 1, { 5, 6 } } }))
    assert.same({ 2, 3, 4, 1, 5, 6 },
      { tonumber(l2.a), tonumber(l2.b), tonumber(l2.c), tonumber(l2.d), tonumber(l2.s.a), tonumber(l2.s.b) })
  end)

  it("gives per-CPU tables' leaves by CPU number, and their sum", function()
    local b = BPF:new{ text = "BPF_PERCPU_ARRAY(pc, u64, 2);" }
    local t = b:get_table("pc")
    local n = sys.possible_cpus()
    local vals = {}
    for cpu = 1, n do
      vals[cpu] = cpu * 10
    end
    t:set(1, vals)
    local got = t:get(1)
    for cpu = 0, n - 1 do
      assert.equals((cpu + 1) * 10, tonumber(got[cpu]))
    end
    assert.equals(10 * n * (n + 1) / 2, tonumber(t:sum(1)))
  end)

  it("opens perf buffers whose callback gets (cpu, event) cast to the given type", function()
    local b = BPF:new{ text = [[
#include <uapi/linux/ptrace.h>
struct ev { u64 pid; u64 arg; };
BPF_PERF_OUTPUT(events);
int on_call(struct pt_regs *ctx) {
  struct ev e = { bpf_get_current_pid_tgid() >> 32, PT_REGS_PARM1(ctx) };
  events.perf_submit(ctx, &e, sizeof(e));
  return 0;
}]] }
    local n, sum, pids, cpus_ok, lost = 0, 0, {}, true, 0
    local online = {}
    for _, c in ipairs(sys.online_cpus()) do
      online[c] = true
    end
    b:get_table("events"):open_perf_buffer(function(cpu, event)
      n = n + 1
      sum = sum + tonumber(event.arg)
      pids[tonumber(event.pid)] = true
      cpus_ok = cpus_ok and online[cpu] == true
    end, "struct { uint64_t pid; uint64_t arg; }", nil, 16, function(_, l)
      lost = lost + l
    end)
    local p, go = run({ H.fixture("ufunc"), tostring(K) })
    b:attach_uprobe{ name = H.fixture("ufunc"), sym = "dn_target_fn", fn_name = "on_call", pid = p.pid }
    assert.equals(0, go())
    while n + lost < K do
      b:perf_buffer_poll(1000)
    end
    assert.equals(0, lost)
    assert.equals(K, n)
    assert.equals(K * (K - 1) / 2, sum)
    assert.same({ [p.pid] = true }, pids)
    assert.is_true(cpus_ok)
  end)

  it("walks stack traces and resolves them with a SymbolCache", function()
    local b = BPF:new{ text = [[
#include <uapi/linux/ptrace.h>
BPF_STACK_TRACE(stacks, 64);
BPF_ARRAY(ids, int, 1);
int on_fire(struct pt_regs *ctx) {
  int k = 0, id = stacks.get_stackid(ctx, BPF_F_USER_STACK);
  ids.update(&k, &id);
  return 0;
}]] }
    local ff = fifo()
    local p = denet.spawn({ H.fixture("usdt_probe"), "1", ff }, { stdout = "null" }):resume()
    local w = assert(io.open(ff, "w"))
    b:attach_uprobe{ name = H.fixture("usdt_probe"), sym = "fire", fn_name = "on_fire", pid = p.pid }
    w:write("g")
    w:flush()
    -- fire() runs once; the fixture then waits for the second byte, so
    -- its stack resolves while it lives
    local id = 0
    local deadline = denet.clock() + 10
    while id == 0 and denet.clock() < deadline do
      id = b:get_table("ids"):get(0)
      denet.sleep(0.005)
    end
    local cache = BPF.SymbolCache(p.pid)
    local names = b:get_table("stacks"):get(id, function(addr)
      return (cache:resolve(addr))
    end)
    w:write("x")
    w:close()
    assert.equals(0, p:wait())
    assert.equals("fire", names[1])
    assert.equals("main", names[2])
    local n = 0
    for addr in b:get_table("stacks"):walk(id) do
      n = n + 1
      assert.equals("cdata", type(addr))
    end
    assert.equals(#names, n)
    -- a stack id that is no stack: nothing to walk
    assert.same({}, b:get_table("stacks"):get(-14))
  end)

  it("resolves kernel addresses with BPF.SymbolCache() and b:ksym", function()
    local addr
    for line in io.lines("/proc/kallsyms") do
      local a, name = line:match("^(%x+) [Tt] (%S+)$")
      if name == "do_syscall_64" then
        -- kernel addresses need 64 bits: no Lua number
        addr = require("bcc.vendor.posix").tonumber64(a, 16)
        break
      end
    end
    assert.is_not_nil(addr)
    local name, off = BPF.SymbolCache():resolve(addr + 4)
    assert.equals("do_syscall_64", name)
    assert.equals(4, off)
    local b = BPF:new{ text = "BPF_HASH(h);" }
    assert.equals("do_syscall_64", b:ksym(addr))
    assert.equals("do_syscall_64+0x4", BPF.ksym(addr + 4, true))
  end)

  it("reads bpf_trace_printk lines with pipe():trace_fields()", function()
    local b = BPF:new{ text = [[
#include <uapi/linux/ptrace.h>
int on_call(struct pt_regs *ctx) {
  if (PT_REGS_PARM1(ctx) == 7) bpf_trace_printk("denet-mark %d\n", 4242);
  return 0;
}]] }
    local p, go = run({ H.fixture("ufunc"), "10" })
    b:attach_uprobe{ name = H.fixture("ufunc"), sym = "dn_target_fn", fn_name = "on_call", pid = p.pid }
    assert.equals(0, go())
    local pipe = b:pipe()
    assert.equals(pipe, b:pipe())
    -- trace_pipe is the machine's: skip what others left there
    local task, pid, cpu, flags, ts, msg
    repeat
      task, pid, cpu, flags, ts, msg = pipe:trace_fields()
    until msg == "denet-mark 4242"
    assert.equals(p.pid, pid)
    assert.equals("ufunc", task)
    assert.is_number(cpu)
    assert.is_string(flags)
    assert.is_true(ts > 0)
  end)
end)

describe("USDT", function()
  after_each(function()
    BPF.cleanup()
    BCC.USDT.cleanup()
  end)

  local PROG = [[
BPF_ARRAY(acc, u64, 3);
static void add(int k, u64 v) { u64 *a = acc.lookup(&k); if (a) *a += v; }
int on_tick(struct pt_regs *ctx) {
  long i = 0, v = 0;
  bpf_usdt_readarg(1, ctx, &i);
  bpf_usdt_readarg(2, ctx, &v);
  add(0, 1); add(1, v);
  return 0;
}
int on_guarded(struct pt_regs *ctx) { add(2, 1); return 0; }
]]

  it("reads a binary's probes and their arguments (path context)", function()
    local u = BCC.USDT:new{ path = H.fixture("usdt_probe") }
    local names = {}
    for _, pr in ipairs(u:probes()) do
      names[pr.name] = pr.arguments
    end
    assert.same({ tick = 2, name = 1, guarded = 1 }, names)
    u:enable_probe{ probe = "tick", fn_name = "on_tick" }
    local b = BPF:new{ text = PROG, usdt = u }
    assert.equals(1, BPF.num_open_uprobes())
    local N = 50
    assert.equals(0, denet.spawn({ H.fixture("usdt_probe"), tostring(N) }, { stdout = "null" }):resume():wait())
    local acc = b:get_table("acc")
    assert.equals(N, tonumber(acc:get(0)))
    assert.equals(3 * N * (N + 1) / 2, tonumber(acc:get(1)))
  end)

  it("raises a probe's semaphore in the process it traces (pid context)", function()
    local N = 20
    local ff = fifo()
    local out = H.tmpfile(".out")
    local p = denet.spawn({ H.fixture("usdt_probe"), tostring(N), ff }, { stdout = out }):resume()
    local w = assert(io.open(ff, "w")) -- the fixture has exec'd and opened it
    local u = BCC.USDT:new{ pid = p.pid }
    u:enable_probe{ probe = "denet:guarded", fn_name = "on_guarded" }
    local b = BPF:new{ text = PROG, usdt = u }
    w:write("gx")
    w:close()
    assert.equals(0, p:wait())
    assert.equals(N, tonumber(b:get_table("acc"):get(2)))
    assert.equals("guarded=" .. N .. "\n", H.slurp(out))
  end)

  it("without a tracer the guarded probe never fires", function()
    local out = H.tmpfile(".out")
    assert.equals(0, denet.spawn({ H.fixture("usdt_probe"), "5" }, { stdout = out }):resume():wait())
    assert.equals("guarded=0\n", H.slurp(out))
  end)

  it("says which probe cannot be enabled", function()
    local u = BCC.USDT:new{ path = H.fixture("usdt_probe") }
    local ok, err = pcall(u.enable_probe, u, { probe = "nope", fn_name = "f" })
    assert.is_false(ok)
    assert.truthy(err:find("cannot enable USDT probe nope", 1, true))
  end)
end)

describe("a bcc-probe script (returns function(BPF, utils))", function()
  it("runs with denet script, with bcc's utils, src_file beside it and arg", function()
    local dir = H.tmpfile(".d")
    assert(os.execute("mkdir -p " .. dir) == 0)
    H.write(dir .. "/prog.c", "BPF_ARRAY(cnt, u64, 1);\n")
    H.write(dir .. "/probe.lua", [[
assert(arg[1] == "-n", "arg as bcc-probe sets it")
return function(BPF, utils)
  local parser = utils.argparse("probe", "a test")
  parser:option("-n --num"):convert(tonumber)
  local args = parser:parse()
  local b = BPF:new{ src_file = "prog.c" }
  local t = b:get_table("cnt")
  t:set(0, args.num)
  assert(utils.posix.cpu_count() >= 1)
  assert(utils.posix.time_ns() > 0)
  print("cnt=" .. tonumber(t:get(0)))
end
]])
    -- run from another folder: prog.c is the script's
    local code, out, err = H.denet({ "script", dir .. "/probe.lua", "-n", "17" }, "cd / && ")
    assert.equals(0, code, err)
    assert.equals("cnt=17\n", out)
  end)

  it("reports a failure as the script's file:line", function()
    local f = H.script([[
return function(BPF)
  local b = BPF:new{ text = "int f(void *c) { return 0; }" }
  b:attach_uprobe{ name = "no-such-lib-xyz", sym = "f", fn_name = "f" }
end
]])
    local code, _, err = H.denet({ "script", f })
    assert.equals(1, code)
    assert.matches(f:gsub("%p", "%%%0") .. ":3: cannot find library or binary 'no%-such%-lib%-xyz'", err)
  end)
end)

describe("kprobes through bcc's API", function()
  it("are refused with the reason when the kernel has none, else attach", function()
    local b = BPF:new{ text = "int f(void *ctx) { return 0; }" }
    if sys.has_kprobes() then
      b:attach_kprobe{ event = "do_nanosleep", fn_name = "f", retprobe = true }
      assert.equals(1, BPF.num_open_kprobes())
      BPF.cleanup()
      assert.equals(0, BPF.num_open_kprobes())
    else
      local ok, err = pcall(b.attach_kprobe, b, { event = "do_nanosleep", fn_name = "f", retprobe = true })
      assert.is_false(ok)
      assert.equals("string", type(err))
      assert.truthy(err:find("cannot attach kretprobe to do_nanosleep: this kernel has no kprobes", 1, true))
      assert.equals(0, BPF.num_open_kprobes())
    end
  end)
end)
