-- Shared by every busted spec (loaded with --helper): where the build and
-- fixtures are, and how to run denet as a separate process.
local H = {}

H.bin = os.getenv("DENET_BIN") or "denet"
H.fixtures = os.getenv("DENET_FIXTURES") or "."
H.source = os.getenv("DENET_SOURCE") or "."

function H.fixture(name)
  return H.fixtures .. "/" .. name
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then
    return ""
  end
  local s = f:read("*a")
  f:close()
  return s
end
H.slurp = slurp

function H.write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

local tmpdir
function H.tmpdir()
  if not tmpdir then
    local p = io.popen("mktemp -d /tmp/denet-test.XXXXXX")
    tmpdir = p:read("*l")
    p:close()
    -- tests that drop privileges still read their scripts
    os.execute("chmod 755 " .. tmpdir)
  end
  return tmpdir
end

local n = 0
function H.tmpfile(suffix)
  n = n + 1
  return string.format("%s/f%d%s", H.tmpdir(), n, suffix or "")
end

function H.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Run a shell command line; returns exit code, stdout, stderr.
function H.sh(cmdline)
  local out, err = H.tmpfile(".out"), H.tmpfile(".err")
  local ok, how, code = os.execute(string.format("%s >%s 2>%s", cmdline, out, err))
  -- LuaJIT's os.execute returns the raw wait status unless built with 5.2 compat
  if type(ok) == "number" then
    code = ok >= 256 and math.floor(ok / 256) or ok
  elseif how == "signal" then
    code = 128 + code
  end
  return code, slurp(out), slurp(err)
end

-- Shell functions for tests that start things in the background and must
-- wait for a state, not sleep a guessed time (each gives up after 20 s):
--   attached PID    until PID holds a perf event or BPF link (its programs are
--                   attached: tracing has begun)
--   lines FILE N    until FILE has N lines
--   state PID S     until /proc/PID/stat shows state S (e.g. S: asleep)
--   comm PID NAME   until PID runs NAME (it has exec'd)
H.WAIT_SH = [[
attached() {
  for _ in $(seq 1000); do ls -l /proc/$1/fd 2>/dev/null | grep -qE 'perf_event|bpf_link' && return; sleep 0.02; done
}
lines() {
  for _ in $(seq 1000); do [ "$(cat "$1" 2>/dev/null | wc -l)" -ge "$2" ] && return; sleep 0.02; done
}
state() {
  for _ in $(seq 1000); do [ "$(sed 's/.*) //' /proc/$1/stat | cut -c1)" = "$2" ] && return; sleep 0.02; done
}
comm() {
  for _ in $(seq 1000); do [ "$(cat /proc/$1/comm 2>/dev/null)" = "$2" ] && return; sleep 0.02; done
}
]]

-- How many BPF programs process pid holds, and whether it holds an
-- attachment (a perf event or BPF link fd): its own programs, not the
-- machine's (another tracer may run beside the suite).
function H.bpf_of(pid)
  local progs, attached = 0, false
  local p = io.popen("ls -l /proc/" .. tonumber(pid) .. "/fd 2>/dev/null")
  for line in p:lines() do
    if line:find("perf_event") or line:find("bpf_link") then
      attached = true
    end
    progs = progs + (line:find("anon_inode:bpf%-prog") and 1 or 0)
  end
  p:close()
  return progs, attached
end

-- Wait (10 s at most, polling) until process pid has attached programs
-- and holds at least min_progs of them; returns whether it did.
function H.wait_attached(pid, min_progs)
  local denet = require("denet")
  return denet.wait(function()
    local progs, att = H.bpf_of(pid)
    return att and progs >= (min_progs or 1)
  end, 10)
end

-- Every line of a JSONL file, decoded (an error if one is not whole JSON).
function H.jsonl(path)
  local cjson = require("cjson")
  local out = {}
  for line in io.lines(path) do
    out[#out + 1] = cjson.decode(line)
  end
  return out
end

-- Run denet with the given argument list; returns code, stdout, stderr.
function H.denet(args, prefix)
  local q = {}
  for i, a in ipairs(args) do
    q[i] = H.quote(a)
  end
  return H.sh((prefix or "") .. H.quote(H.bin) .. " " .. table.concat(q, " "))
end

--- `denet script offcpu --json OPTS -- ARGV`: its report, decoded (it
--- must exit 0).
function H.offcpu(opts, argv)
  local args = { "script", "offcpu", "--json" }
  for _, o in ipairs(opts) do
    args[#args + 1] = o
  end
  args[#args + 1] = "--"
  for _, a in ipairs(argv) do
    args[#args + 1] = a
  end
  local code, out, err = H.denet(args)
  if code ~= 0 then
    error(string.format("denet exited %s: %s", tostring(code), err), 2)
  end
  return require("cjson").decode(out)
end

-- Tests that drop privileges run this install, readable by every user,
-- not the checkout (which may sit in a 0700 folder).
H.readable = os.getenv("DENET_READABLE")

function H.readable_fixture(name)
  return H.readable .. "/fixtures/" .. name
end

H.NOBODY = "setpriv --reuid=65534 --regid=65534 --clear-groups "

-- Run the readable install's denet as user nobody; code, stdout, stderr.
-- (A sanitizer build reads its suppressions as nobody too: from the
-- install's copy, since the checkout may be a 0700 folder.)
function H.denet_as_nobody(args, prefix)
  local q = {}
  for i, a in ipairs(args) do
    q[i] = H.quote(a)
  end
  local lsan = os.getenv("LSAN_OPTIONS")
  if lsan then
    local opts = {}
    for o in lsan:gmatch("[^:]+") do
      opts[#opts + 1] = o:match("^suppressions=") and ("suppressions=" .. H.readable .. "/lsan.supp") or o
    end
    prefix = "LSAN_OPTIONS=" .. H.quote(table.concat(opts, ":")) .. " " .. (prefix or "")
  end
  return H.sh((prefix or "") .. H.NOBODY .. H.quote(H.readable .. "/bin/denet") .. " " .. table.concat(q, " "))
end

-- Write a Lua script to a temp file and return its path.
function H.script(text)
  return H.write(H.tmpfile(".lua"), text)
end

-- Syscall number of a syscall by name, from the C library's headers.
function H.nr(name)
  local s = slurp("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
  return tonumber(s:match("#define __NR_" .. name .. "%s+(%d+)"))
end

-- An off-CPU report's sleep total for a fixture: within 5% of `want` (us),
-- less one block of `block_us` for each block the report says is missing
-- (missed_switches: the kernel skipped the program; lost_blocks: their
-- entry could not be stored; unended_blocks: their end was not seen).
-- Returns ok and what it saw.
function H.sleeps_within(report, sleep, want, block_us)
  -- blocks the report says it missed (switches the kernel skipped, entries
  -- it could not store) may be missing
  local missed = (report.missed_switches or 0) + (report.lost_blocks or 0) + (report.unended_blocks or 0)
  local ok = sleep <= want * 1.05 and sleep >= want * 0.95 - missed * block_us
  return ok, string.format("sleep %d us of %d; blocks seen %s, lost %s, unended %s; missed switches %s", sleep,
    want, tostring(report.blocks_seen), tostring(report.lost_blocks), tostring(report.unended_blocks),
    tostring(report.missed_switches))
end

-- An off-CPU report's count of blocks (got) is want, or short of it by no
-- more than the blocks the report says it missed (as sleeps_within).
function H.blocks_within(report, got, want)
  local missed = (report.missed_switches or 0) + (report.lost_blocks or 0) + (report.unended_blocks or 0)
  return got <= want and got >= want - missed, string.format("%d blocks of %d; lost %s, unended %s; missed switches %s",
    got, want, tostring(report.lost_blocks), tostring(report.unended_blocks), tostring(report.missed_switches))
end

-- The monitor's sample deadlines (ms after t0) up to total_ms, on the
-- adaptive schedule of base and max (ms): what a run of that length is
-- due to sample.
function H.deadlines(total_ms, base_ms, max_ms)
  local monitor = require("denet.monitor")
  local out, d = {}, 0
  while true do
    d = d + monitor.interval_at(d / 1000, base_ms / 1000, max_ms / 1000) * 1000
    if d > total_ms then
      return out
    end
    out[#out + 1] = d
  end
end

-- The items of a report's list by thread id (their tid field).
--- The Python frames of a stack's frames (root first, as reports give
--- them), innermost first: { { function, line } }.
function H.py_frames(frames)
  local out = {}
  for i = #frames, 1, -1 do
    local name, line = frames[i]:match("^(.-) %([^()]+%.py:(%d+)%)$")
    if name then
      out[#out + 1] = { name, tonumber(line) }
    end
  end
  return out
end

function H.by_tid(list)
  local out = {}
  for _, t in ipairs(list) do
    out[t.tid] = t
  end
  return out
end

_G.H = H
return H
