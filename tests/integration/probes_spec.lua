-- Real BPF: uprobes and uretprobes on a fixture's function, cpu-clock
-- sampling with stacks that resolve to the fixture's functions, symbols.
local denet = require("denet")
local BPF = require("denet.bpf")
local syms = require("denet.syms")
local ffi = require("ffi")

describe("uprobes", function()
  it("count exactly K calls and see every return value", function()
    local k = 1234
    local p = denet.spawn({ H.fixture("ufunc"), tostring(k) })
    local b = BPF.new{ text = [[
#include <uapi/linux/ptrace.h>
BPF_ARRAY(calls, u64, 1);
BPF_ARRAY(rets, u64, 2);
int on_entry(struct pt_regs *ctx) {
  int z = 0; calls.increment(z);
  return 0;
}
int on_return(struct pt_regs *ctx) {
  int z = 0, one = 1;
  u64 *sum = rets.lookup(&z), *n = rets.lookup(&one);
  if (sum) __sync_fetch_and_add(sum, (u64)(int)PT_REGS_RC(ctx));
  if (n) __sync_fetch_and_add(n, 1);
  return 0;
}
]] }
    b:attach_uprobe{ name = H.fixture("ufunc"), sym = "dn_target_fn", fn_name = "on_entry", pid = p.pid }
    b:attach_uretprobe{ name = H.fixture("ufunc"), sym = "dn_target_fn", fn_name = "on_return", pid = p.pid }
    assert.equals(2, b:num_attached())
    p:resume()
    assert.equals(0, p:wait())
    assert.equals(k, tonumber(b:get_table("calls"):get(0)))
    local rets = b:get_table("rets")
    assert.equals(k, tonumber(rets:get(1)))
    -- dn_target_fn(i) returns 2i+1: the sum over i < k is k*k
    assert.equals(k * k, tonumber(rets:get(0)))
    b:close()
  end)

  it("attach by ELF address counts the same", function()
    local nm = io.popen("nm " .. H.fixture("ufunc") .. " | awk '$3 == \"dn_target_fn\" {print $1}'")
    local addr = tonumber(nm:read("*l"), 16)
    nm:close()
    local p = denet.spawn({ H.fixture("ufunc"), "321" })
    local b = BPF.new{ text = "BPF_ARRAY(calls, u64, 1);\n"
      .. "int on_entry(void *ctx) { int z = 0; calls.increment(z); return 0; }" }
    b:attach_uprobe{ name = H.fixture("ufunc"), addr = addr, fn_name = "on_entry", pid = p.pid }
    p:resume()
    p:wait()
    assert.equals(321, tonumber(b:get_table("calls"):get(0)))
    b:close()
  end)

  it("raises a clear error for a symbol that does not exist", function()
    local b = BPF.new{ text = "int f(void *ctx) { return 0; }" }
    local ok, err = pcall(b.attach_uprobe, b, { name = H.fixture("ufunc"), sym = "no_such_fn", fn_name = "f" })
    assert.is_false(ok)
    assert.matches("cannot find symbol 'no_such_fn'", tostring(err))
    b:close()
  end)
end)

describe("kprobes on a kernel without them", function()
  it("fail with a clear message naming the alternative", function()
    local b = BPF.new{ text = "int f(void *ctx) { return 0; }" }
    local ok, err = pcall(b.attach_kprobe, b, { event = "do_nanosleep", fn_name = "f" })
    if require("denet.sys").has_kprobes() then
      -- a kernel with kprobes attaches it
      assert.is_true(ok)
    else
      assert.is_false(ok)
      assert.matches("no kprobes", tostring(err))
      assert.matches("tracepoint", tostring(err))
    end
    b:close()
  end)
end)

describe("cpu-clock sampling", function()
  it("samples a busy loop at 99 Hz per CPU second it got, in busy_spin", function()
    local p = denet.spawn({ H.fixture("busy"), "1" })
    local b = BPF.new{ text = [[
#include <uapi/linux/bpf_perf_event.h>
BPF_STACK_TRACE(stacks, 16384);
BPF_HASH(samples, int, u64, 1024);
int on_sample(struct bpf_perf_event_data *ctx) {
  if ((bpf_get_current_pid_tgid() >> 32) != TARGET) return 0;
  int id = stacks.get_stackid(&ctx->regs, BPF_F_USER_STACK);
  samples.increment(id);
  return 0;
}
]], cflags = { "-DTARGET=" .. p.pid } }
    local hs = b:attach_perf_event{ ev_type = BPF.PERF_TYPE_SOFTWARE, ev_config = BPF.PERF_COUNT_SW_CPU_CLOCK,
      fn_name = "on_sample", sample_freq = 99 }
    assert.equals(#require("denet.sys").online_cpus(), #hs)
    syms.capture(p.pid) -- the held child is still denet: capture after exec
    p:resume()
    denet.sleep(0.2)
    assert.is_true(syms.capture(p.pid))
    local code, ru = p:wait()
    assert.equals(0, code)
    local total, walked, in_spin, other = 0, 0, 0, {}
    local stacks = b:get_table("stacks")
    for id, n in b:get_table("samples"):items() do
      total = total + tonumber(n)
      -- (a stack whose hash bucket another stack took first has no id:
      -- -EEXIST; the loop's few IPs make a few stacks)
      if id >= 0 then
        walked = walked + tonumber(n)
        local frames = syms.frames(stacks:stack_walk(id), p.pid)
        if frames[1] == "busy_spin" or frames[2] == "busy_spin" then
          in_spin = in_spin + tonumber(n)
        else
          other[#other + 1] = tonumber(n) .. "x " .. table.concat(frames, ";")
        end
      end
    end
    -- cpu-clock samples the CPU the process ran on: 99 per second of the
    -- CPU time the kernel counted for it, however loaded the machine
    local want = 99 * (ru.utime + ru.stime)
    assert.is_true(want > 20, "cpu " .. (ru.utime + ru.stime))
    assert.is_true(math.abs(total - want) <= 0.2 * want, string.format("samples %d for %.0f expected", total, want))
    -- the process has exited: names came from the captured mappings
    assert.is_true(walked >= 0.5 * total, string.format("%d of %d samples have a stack", walked, total))
    assert.is_true(in_spin >= 0.9 * walked, string.format("%d of %d in busy_spin; the others: %s", in_spin, walked,
      table.concat(other, " | ")))
    b:close()
  end)
end)

describe("symbols", function()
  it("resolve kernel addresses from kallsyms", function()
    local f = io.open("/proc/kallsyms")
    local addr
    for line in f:lines() do
      local a, _, name = line:match("^(%x+) (%a) (%S+)$")
      if name == "do_nanosleep" then
        -- 64-bit exact (a Lua number would round the address)
        addr = ffi.cast("uint64_t", tonumber(a:sub(1, 8), 16)) * 4294967296ULL + tonumber(a:sub(9), 16)
        break
      end
    end
    f:close()
    assert.is_not_nil(addr)
    assert.equals("do_nanosleep", syms.ksym(addr))
    assert.equals("do_nanosleep+0x10", syms.ksym(addr + 16, true))
  end)

  it("resolve user addresses of a live process, with module+offset when no symbol covers them", function()
    local p = denet.spawn({ H.fixture("sleeper"), "5" })
    p:resume()
    denet.sleep(0.1)
    assert.is_true(syms.capture(p.pid))
    -- find dn's own view: the address of main in the fixture's mapping
    local nm = io.popen("nm " .. H.fixture("sleeper") .. " | awk '$3 == \"main\" {print $1}'")
    local main_off = tonumber(nm:read("*l"), 16)
    nm:close()
    local base
    for line in io.lines("/proc/" .. p.pid .. "/maps") do
      local s, off, path = line:match("^(%x+)%-%x+ %S+ (%x+) %S+ %d+%s+(%S+)$")
      if path == H.fixture("sleeper") and tonumber(off, 16) == 0 then
        base = tonumber(s, 16)
        break
      end
    end
    assert.is_not_nil(base)
    -- a PIE's ELF addresses start at 0: address = base + ELF address
    assert.equals("main", syms.usym(p.pid, base + main_off))
    assert.equals("main+0x4", syms.usym(p.pid, base + main_off + 4, { offset = true }))
    p:kill()
    p:wait()
    -- still resolves after exit, from the capture
    assert.equals("main", syms.usym(p.pid, base + main_off))
    assert.equals("[unknown]", syms.usym(p.pid, 16))
  end)
end)
