-- denet as a user runs it: exit codes, one-line errors, file:line for
-- script bugs, and cleanup on signals (nothing left loaded in the kernel).
local _ -- results a test does not look at

-- a command-line prefix: run denet in a mount namespace after `setup`
local function in_mount_ns(setup)
  return "unshare -m sh -c '" .. setup .. " && exec \"$0\" \"$@\"' "
end

local function lines(s)
  local t = {}
  for l in s:gmatch("[^\n]+") do
    t[#t + 1] = l
  end
  return t
end

describe("denet script", function()
  it("passes arguments in `arg` and exits with the script's number", function()
    local s = H.script([[print(arg[0] ~= nil, arg[1], arg[2], #arg) return 3]])
    local code, out = H.denet({ "script", s, "a b", "c" })
    assert.equals(3, code)
    assert.equals("true\ta b\tc\t2\n", out)
  end)

  it("reports a missing script as one line, exit 2", function()
    local code, out, err = H.denet({ "script", "/nonexistent/x.lua" })
    assert.equals(2, code)
    assert.equals("", out)
    assert.equals(1, #lines(err))
    assert.matches("^denet: cannot open script /nonexistent/x.lua: no such file", err)
    code, _, err = H.denet({ "script", "no-such-builtin" })
    assert.equals(2, code)
    assert.equals(1, #lines(err))
    assert.matches("no script named 'no%-such%-builtin'", err)
  end)

  it("reports a Lua error as file:line with a traceback, exit 1", function()
    local s = H.script("local x = 1\nlocal function f() error('it broke') end\nf()\n")
    local code, _, err = H.denet({ "script", s })
    assert.equals(1, code)
    assert.equals(s .. ":2: it broke", lines(err)[1])
    assert.matches("stack traceback", err)
  end)

  it("reports a syntax error as file:line, exit 1", function()
    local s = H.script("local x = = 1\n")
    local code, _, err = H.denet({ "script", s })
    assert.equals(1, code)
    assert.matches(s:gsub("%p", "%%%0") .. ":1: unexpected symbol", err)
  end)

  it("reports a BPF compile error with clang's line and the Lua call site", function()
    local s = H.script([=[
local BPF = require("denet.bpf")
local b = BPF.new{ text = [[
BPF_HASH(counts, u32, u64);
int f(void *ctx) {
  u32 k = 0;
  counts.increment(k)
  return 0;
}
]] }
]=])
    local code, _, err = H.denet({ "script", s })
    assert.equals(1, code)
    assert.matches("^" .. s:gsub("%p", "%%%0") .. ":2: failed to compile BPF module bpf.c %(1 error%)", err)
    assert.matches("bpf.c:4:%d+: error: expected ';'", err)
    assert.not_matches("stack traceback", err)
  end)

  it("keeps clang's line numbers right inside and after TRACEPOINT_PROBE functions", function()
    local BPF = require("denet.bpf")
    local ok, err = pcall(BPF.new, { text = "BPF_HASH(h, u32, u64);\nTRACEPOINT_PROBE(sched, sched_switch) {\n"
      .. "  u32 k = args->prev_pid\n  return 0;\n}\nTRACEPOINT_PROBE(sched, sched_wakeup)\n{\n  return 0;\n}\n"
      .. "int f(void *c) { return x; }\n" })
    assert.is_false(ok)
    assert.matches("bpf.c:3:25: error: expected ';' at end of declaration", tostring(err))
    assert.matches("bpf.c:10:25: error: use of undeclared identifier 'x'", tostring(err))
  end)

  it("reports a verifier rejection with the verifier log's tail", function()
    local s = H.script([=[
local BPF = require("denet.bpf")
local b = BPF.new{ text = [[
BPF_HASH(m, u32, u64);
TRACEPOINT_PROBE(sched, sched_switch) {
  u32 k = 0;
  u64 *v = m.lookup(&k);
  *v += 1;
  return 0;
}
]] }
]=])
    local code, _, err = H.denet({ "script", s })
    assert.equals(1, code)
    assert.matches("^" .. s:gsub("%p", "%%%0") .. ":2: the kernel refused BPF function "
      .. "tracepoint__sched__sched_switch", err)
    assert.matches("invalid mem access 'map_value_or_null'", err)
  end)

  it("rejects an unknown command, exit 2", function()
    local code, _, err = H.denet({ "frobnicate" })
    assert.equals(2, code)
    assert.matches("unknown command 'frobnicate'", err)
  end)

  it("prints its version", function()
    local code, out = H.denet({ "version" })
    assert.equals(0, code)
    assert.matches("^denet %d+%.%d+%.%d+ %(LuaJIT 2%.1[^,]*, libbcc %d+%.%d+", out)
  end)
end)

describe("machine problems are one line with the fix, exit 2", function()
  local bpf_script = [=[
local BPF = require("denet.bpf")
local b = BPF.new{ text = "TRACEPOINT_PROBE(sched, sched_switch) { return 0; }" }
print("attached")
]=]

  it("not root", function()
    local s = H.script(bpf_script)
    local code, out, err = H.denet_as_nobody({ "script", s })
    assert.equals(2, code)
    assert.equals("", out)
    assert.equals(1, #lines(err))
    -- the place in the script that asked for it, then what is wrong
    assert.matches("^denet: " .. s:gsub("%p", "%%%0") .. ":2: BPF needs privileges: running as uid 65534", err)
    assert.matches("run denet as root", err)
  end)

  it("no kernel headers", function()
    local s = H.script(bpf_script)
    local code, out, err = H.denet({ "script", s }, in_mount_ns("mount -t tmpfs none /lib/modules"))
    assert.equals(2, code)
    assert.equals("", out)
    assert.equals(1, #lines(err))
    -- the place in the script that asked for it, then what is wrong
    assert.matches("^denet: " .. s:gsub("%p", "%%%0") .. ":2: no kernel headers found for kernel", err)
    assert.matches("tools/setup.sh", err)
  end)

  it("tracefs not mounted", function()
    local s = H.script(bpf_script)
    local code, out, err = H.denet({ "script", s },
      in_mount_ns("umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; true"))
    assert.equals(2, code)
    assert.equals("", out)
    assert.equals(1, #lines(err))
    -- the place in the script that asked for it, then what is wrong
    assert.matches("^denet: " .. s:gsub("%p", "%%%0") .. ":2: tracefs is not mounted", err)
    assert.matches("mount %-t tracefs", err)
  end)

  it("doctor exits non-zero and names the missing headers", function()
    local code, out = H.denet({ "doctor" }, in_mount_ns("mount -t tmpfs none /lib/modules"))
    assert.equals(1, code)
    assert.matches("✗ kernel headers%s+%(required%)", out)
    assert.matches("✓ privileges", out)
  end)

  it("doctor passes on this machine", function()
    local code, out = H.denet({ "doctor" })
    assert.equals(0, code)
    assert.matches("✓ tracepoint program", out)
    assert.matches("BPF works here", out)
  end)
end)

describe("signals", function()
  -- start a script that loads dn_sigint_probe, wait for it (up to 60 s:
  -- a BPF compile on a busy machine), signal it
  local function signal_run(sig, body)
    local s = H.script([=[
local denet = require("denet")
local BPF = require("denet.bpf")
local b = BPF.new{ text = "int dn_sigint_probe(void *ctx) { return 0; }" }
b:attach_tracepoint{ tp = "sched:sched_switch", fn_name = "dn_sigint_probe" }
io.stdout:write("ready\n") io.stdout:flush()
]=] .. body)
    local sh = string.format([[
out=%s; %s script %s >"$out" 2>&1 & pid=$!
for i in $(seq 1200); do grep -q ready "$out" && break; sleep 0.05; done
before=$(bpftool prog show | grep -c dn_sigint_probe)
t0=$(date +%%s%%N); kill -%s $pid; wait $pid; rc=$?; t1=$(date +%%s%%N)
echo "rc=$rc ms=$(( (t1 - t0) / 1000000 )) before=$before after=$(bpftool prog show | grep -c dn_sigint_probe)"
]], H.quote(H.tmpfile(".out")), H.quote(H.bin), H.quote(s), sig)
    local _, out = H.sh("bash -c " .. H.quote(sh))
    local rc, ms, before, after = out:match("rc=(%d+) ms=(%d+) before=(%d+) after=(%d+)")
    return tonumber(rc), tonumber(ms), tonumber(before), tonumber(after)
  end

  it("SIGINT during denet.sleep exits promptly with 130 and unloads everything", function()
    local rc, ms, before, after = signal_run("INT", "denet.sleep(30)\n")
    assert.equals(1, before)
    assert.equals(130, rc)
    assert.is_true(ms < 1000, "took " .. tostring(ms) .. " ms")
    assert.equals(0, after)
  end)

  it("SIGTERM during denet.run exits promptly with 143 and unloads everything", function()
    local rc, ms, before, after = signal_run("TERM", [[
local why, sig = denet.run{ duration = 30 }
os.exit(128 + (sig or 0))
]])
    assert.equals(1, before)
    assert.equals(143, rc)
    assert.is_true(ms < 1000, "took " .. tostring(ms) .. " ms")
    assert.equals(0, after)
  end)

  it("a Lua error after attaching leaves no program loaded", function()
    local rc, _, before, after = signal_run("0", "denet.sleep(1)\nerror('late failure')\n")
    assert.equals(1, before)
    assert.equals(1, rc)
    assert.equals(0, after)
  end)

  it("SIGINT during busy Lua code interrupts it", function()
    local rc, ms, before, after = signal_run("INT", [[
local t = {}
local i = 0
while true do i = i + 1; t[i % 100 + 1] = tostring(i) end
]])
    assert.equals(1, before)
    assert.equals(130, rc)
    assert.is_true(ms < 1000, "took " .. tostring(ms) .. " ms")
    assert.equals(0, after)
  end)
end)
