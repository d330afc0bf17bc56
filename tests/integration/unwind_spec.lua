-- Unwind tables from .eh_frame (host/dn_unwind.c) and the walk over them
-- (denet.stacks.dwarf), on a fixture built without frame pointers and on
-- Debian's own binaries, against elfutils' eu-stack.
local core = require("denet.core")
local dwarf = require("denet.stacks.dwarf")
local unwind = require("denet.stacks.unwind")
local syms = require("denet.syms")

-- eu-stack's addresses of process pid's main thread, leaf first
local function eu_stack(pid)
  local code, out, err = H.sh("eu-stack -p " .. pid)
  assert.equals(0, code, err)
  local addrs = {}
  for a in out:gmatch("\n#%d+%s+0x(%x+)") do
    addrs[#addrs + 1] = tonumber(a, 16)
  end
  return addrs
end

-- Start argv (through sh, which execs it), with its output read here:
-- { pid, line(), kill() }.
local function spawn(argv)
  local q = {}
  for i, a in ipairs(argv) do
    q[i] = H.quote(a)
  end
  local f = io.popen("echo $$; exec " .. table.concat(q, " "))
  local p = { pid = tonumber(f:read("*l")) }
  function p.line()
    return f:read("*l")
  end
  function p.kill()
    os.execute("kill " .. p.pid)
    f:close()
  end
  return p
end

-- Start argv, wait for its line "ready" and until it blocks in a
-- syscall; returns the process and its user sp, pc.
local function blocked(argv)
  local p = spawn(argv)
  assert.equals("ready", p.line())
  local sp, pc
  for _ = 1, 500 do
    local sc = core.read_file("/proc/" .. p.pid .. "/syscall") or ""
    local nr, rest = sc:match("^(%d+) (.*)")
    if nr == "230" or nr == "35" or nr == "7" or nr == "61" or nr == "0" then
      local a, b = rest:match("(0x%x+) (0x%x+)%s*$")
      sp, pc = tonumber(a), tonumber(b)
      -- blocked (S) in it
      local st = core.read_file("/proc/" .. p.pid .. "/stat") or ""
      if st:match("%) S ") then
        break
      end
    end
    require("denet").sleep(0.01)
  end
  assert.is_not_nil(sp, "the fixture never blocked")
  return p, sp, pc
end

local function walk(pid, sp, pc)
  local read, close = unwind.memory(pid)
  local addrs, flags = dwarf.unwind(dwarf.proc_maps(pid), read, pc, sp, nil)
  close()
  return addrs, flags
end

describe("unwind tables", function()
  it("are rows sorted by address, each with a rule the walk can apply or a stop", function()
    local rows, bid, segs = core.uw_table(H.fixture("deep_nofp"))
    assert.is_string(rows)
    assert.matches("^%x+$", bid)
    assert.is_true(#segs >= 1)
    local ffi = require("ffi")
    local n = #rows / ffi.sizeof("struct dn_uw_row")
    local r = ffi.cast("const struct dn_uw_row *", rows)
    assert.is_true(n > 10)
    for i = 1, n - 1 do
      assert.is_true(r[i].pc > r[i - 1].pc)
      assert.is_true(r[i].kind <= 5)
    end
    -- a file without call frame information gets a reason
    local none, why = core.uw_table("/etc/passwd")
    assert.is_nil(none)
    assert.is_string(why)
  end)

  it("walk a stack without frame pointers to _start, as eu-stack does", function()
    local p, sp, pc = blocked({ H.fixture("deep_nofp"), "1", "5000" })
    local want = eu_stack(p.pid)
    local got, flags = walk(p.pid, sp, pc)
    syms.capture(p.pid)
    local names = {}
    for i, a in ipairs(got) do
      names[i] = syms.usym(p.pid, a)
    end
    p.kill()
    assert.equals(0, flags, table.concat(names, " <- "))
    assert.same(want, got)
    assert.equals("level3 level2 level1 main", table.concat(names, " ", 3, 6))
    assert.equals("_start", names[#names])
  end)

  it("walk Debian's own sleep (stripped, no frame pointers) as eu-stack does", function()
    local p, sp, pc = blocked({ "/bin/sh", "-c", "echo ready; exec /usr/bin/sleep 5" })
    -- the shell execs sleep after its line: wait until it has
    for _ = 1, 500 do
      if (core.read_file("/proc/" .. p.pid .. "/comm") or ""):match("^sleep") then
        local sc = core.read_file("/proc/" .. p.pid .. "/syscall") or ""
        local a, b = sc:match("^230 .-(0x%x+) (0x%x+)%s*$")
        if a and (core.read_file("/proc/" .. p.pid .. "/stat") or ""):match("%) S ") then
          sp, pc = tonumber(a), tonumber(b)
          break
        end
      end
      require("denet").sleep(0.01)
    end
    local want = eu_stack(p.pid)
    local got, flags = walk(p.pid, sp, pc)
    p.kill()
    assert.equals(0, flags)
    assert.same(want, got)
    assert.is_true(#got >= 4)
  end)
end)
