-- The compile cache: a second run loads what the first compiled, without
-- clang or LLVM in the process, and counts exactly the same; any change of
-- input misses; a damaged entry is noticed, said in one line and rebuilt;
-- two denets filling one entry are both right; `denet cache ls|clear`;
-- `--no-cache`. Each test has its own cache folder (DENET_CACHE_DIR).
local cjson = require("cjson")

local NR_GETPPID = H.nr("getppid")

local function cache_dir()
  local d = H.tmpfile("-cache")
  assert(os.execute("mkdir -m 0755 " .. H.quote(d)))
  return d
end

local function entries(d)
  local out = {}
  local p = io.popen("ls " .. H.quote(d))
  for f in p:lines() do
    if f:match("^bpf%-.*%.o$") then
      out[#out + 1] = d .. "/" .. f
    end
  end
  p:close()
  table.sort(out)
  return out
end

-- A script that counts a held fixture's getppid calls (the target's pid
-- goes into a map before the probes attach, so the program is the same
-- from run to run) and says whether its program came from the cache and
-- whether the compiler is mapped. `comment` changes the text, the second
-- argument a flag.
local function counter(comment)
  return H.script(string.format([[
local denet = require("denet")
local BPF = require("denet.bpf")
local cjson = require("cjson")
local n, flag = arg[1], arg[2]
local p = denet.spawn({ %q, n })
local b = BPF.new{ text = [==[
/* %s */
BPF_ARRAY(target, u32, 1);
BPF_HASH(counts, u32, u64, 16);
BPF_TASK_STORAGE(seen, u64);
TRACEPOINT_PROBE(raw_syscalls, sys_enter) {
  u32 zero = 0;
  u32 *t = target.lookup(&zero);
  if (!t || (bpf_get_current_pid_tgid() >> 32) != *t) return 0;
  if (args->id != NR) return 0;
  u32 k = FLAG;
  counts.increment(k);
  u64 *s = seen.task_storage_get(bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
  if (s) (*s)++;
  return 0;
}
]==], cflags = { "-DNR=%d", "-DFLAG=" .. flag }, before_attach = function(bpf)
  bpf:get_table("target"):set(0, p.pid)
end }
p:resume()
p:wait()
local maps = io.open("/proc/self/maps"):read("*a")
-- a sanitizer build links libbcc's compiler: LLVM is always mapped there
local linked = require("denet.core").compiler_linked()
-- the name the kernel shows for the program (bpftool): whole, not cut to 15 bytes
local fd = b:load_func("tracepoint__raw_syscalls__sys_enter", BPF.TRACEPOINT)
local id = io.open("/proc/self/fdinfo/" .. fd):read("*a"):match("prog_id:%%s*(%%d+)")
local show = io.popen("bpftool prog show id " .. id .. " -j"):read("*a")
print(cjson.encode({ count = tonumber(b:get_table("counts"):get(tonumber(flag)) or 0), cached = b.from_cache,
  llvm = maps:find("libLLVM", 1, true) ~= nil and not (linked and b.from_cache), name = cjson.decode(show).name }))
]], H.fixture("getppid_n"), comment, NR_GETPPID))
end

local function env(d)
  return "DENET_CACHE_DIR=" .. H.quote(d) .. " "
end

-- Run a counter script with the cache in d; returns the decoded last line
-- of stdout and stderr.
local function run(d, script, n, flag, extra)
  local args = { "script", script, tostring(n), tostring(flag or 0) }
  if extra then
    table.insert(args, 1, extra)
  end
  local code, out, err = H.denet(args, env(d))
  assert.equals(0, code, err)
  local r = cjson.decode(out:match("([^\n]+)\n?$"))
  local name = r.name
  r.name = nil
  return r, err, name
end

local function flip_byte(path, at)
  local f = assert(io.open(path, "r+b"))
  local size = f:seek("end")
  f:seek("set", at or math.floor(size / 2))
  local c = f:read(1)
  f:seek("cur", -1)
  f:write(string.char((c:byte() + 1) % 256))
  f:close()
end

local function truncate(path)
  local s = H.slurp(path)
  H.write(path, s:sub(1, math.floor(#s * 2 / 3)))
end

-- CRC-32 (zlib's), to forge an entry whose checksum holds
local function crc32(s)
  local bit = require("bit")
  local crc = 0xffffffff
  for i = 1, #s do
    crc = bit.bxor(crc, s:byte(i))
    for _ = 1, 8 do
      local lsb = bit.band(crc, 1)
      crc = bit.rshift(crc, 1)
      if lsb == 1 then
        crc = bit.bxor(crc, 0xedb88320)
      end
    end
  end
  return bit.bnot(crc) % 4294967296
end

local function u64(s, at)
  local v = 0
  for i = 7, 0, -1 do
    v = v * 256 + s:byte(at + i)
  end
  return v
end

-- Rewrite an entry's payload with f(payload) and a checksum that matches.
local function forge(path, f)
  local s = H.slurp(path)
  local at = #"denet-bpf-cache 1\n" + 1
  at = at + 8 + u64(s, at) -- key
  at = at + 8 + u64(s, at) -- label
  local head = s:sub(1, at + 7)
  local payload = f(s:sub(at + 12))
  local c = crc32(payload)
  local le = string.char(c % 256, math.floor(c / 256) % 256, math.floor(c / 65536) % 256, math.floor(c / 16777216))
  H.write(path, head .. le .. payload)
end

describe("the compile cache", function()
  it("loads the second run's program without the compiler, and it counts exactly", function()
    local d = cache_dir()
    local s = counter("first")
    local r1, _, name1 = run(d, s, 30000)
    assert.same({ count = 30000, cached = false, llvm = true }, r1)
    assert.equals(1, #entries(d))
    local r2, _, name2 = run(d, s, 12345)
    assert.same({ count = 12345, cached = true, llvm = false }, r2)
    -- the kernel knows a cached program by its whole name, as a compiled one
    assert.equals("tracepoint__raw_syscalls__sys_enter", name1)
    assert.equals(name1, name2)
    assert.equals(1, #entries(d))
  end)

  it("misses on any change of the text or the flags, and keeps each", function()
    local d = cache_dir()
    run(d, counter("a"), 10)
    local r = run(d, counter("b"), 20)
    assert.same({ count = 20, cached = false, llvm = true }, r)
    assert.equals(2, #entries(d))
    r = run(d, counter("a"), 30, 1)
    assert.same({ count = 30, cached = false, llvm = true }, r)
    assert.equals(3, #entries(d))
    r = run(d, counter("a"), 40, 1)
    assert.same({ count = 40, cached = true, llvm = false }, r)
    r = run(d, counter("b"), 50)
    assert.same({ count = 50, cached = true, llvm = false }, r)
  end)

  it("notices a damaged or cut entry, says so in one line, compiles and keeps a good one", function()
    local d = cache_dir()
    local s = counter("damage")
    run(d, s, 10)
    local e = entries(d)[1]
    flip_byte(e)
    local r, err = run(d, s, 100)
    assert.same({ count = 100, cached = false, llvm = true }, r)
    assert.matches("^denet: the cached build of [^\n]+ cannot be used %(the entry's checksum does not match%); "
      .. "compiling it again\n$", err)
    r, err = run(d, s, 200)
    assert.same({ count = 200, cached = true, llvm = false }, r)
    assert.equals("", err)
    truncate(e)
    r, err = run(d, s, 300)
    assert.same({ count = 300, cached = false, llvm = true }, r)
    assert.matches("^denet: the cached build of [^\n]+ cannot be used %(the entry holds %d+ bytes of %d+%); "
      .. "compiling it again\n$", err)
    -- cut inside the header
    H.write(e, H.slurp(e):sub(1, 30))
    r, err = run(d, s, 400)
    assert.same({ count = 400, cached = false, llvm = true }, r)
    assert.matches("cannot be used %(the entry is cut short%)", err)
    r = run(d, s, 500)
    assert.same({ count = 500, cached = true, llvm = false }, r)
    -- an entry others could have written is not loaded (root's trust rule)
    assert(os.execute("chmod 0666 " .. H.quote(e)))
    r, err = run(d, s, 600)
    assert.same({ count = 600, cached = false, llvm = true }, r)
    assert.matches("^denet: the cached build of bpf%.c cannot be used %([^\n]*writable[^\n]*%); compiling it again\n$",
      err)
    -- replaced by a good one
    assert.same({ count = 700, cached = true, llvm = false }, run(d, s, 700))
  end)

  it("compiles afresh, with one line, when the kernel refuses a program it kept", function()
    local d = cache_dir()
    local s = counter("refused")
    run(d, s, 10)
    local e = entries(d)[1]
    -- a whole entry, but not GPL: the kernel refuses its GPL-only helpers
    forge(e, function(p)
      assert.equals("GPL", p:sub(9, 11))
      return p:sub(1, 8) .. "BSD" .. p:sub(12)
    end)
    local _, ls = H.denet({ "cache", "ls" }, env(d))
    assert.matches("1 functions, 3 tables", ls)
    local r, err = run(d, s, 60)
    assert.same({ count = 60, cached = false, llvm = true }, r)
    assert.matches("^denet: the cached build of bpf%.c cannot be used %([^\n]+%); compiling it again\n$", err)
    assert.same({ count = 70, cached = true, llvm = false }, run(d, s, 70))
  end)

  it("lets two denets fill the same entry at once, both right", function()
    local d = cache_dir()
    local s = counter("race")
    local cmd = env(d) .. H.quote(H.bin) .. " script " .. H.quote(s) .. " "
    local outs = { H.tmpfile(".out"), H.tmpfile(".out"), H.tmpfile(".out") }
    local code = H.sh(string.format("(%s 11111 0 > %s) & (%s 22222 0 > %s) & (%s 33333 0 > %s) & wait", cmd, outs[1],
      cmd, outs[2], cmd, outs[3]))
    assert.equals(0, code)
    for i, n in ipairs({ 11111, 22222, 33333 }) do
      local r = cjson.decode(H.slurp(outs[i]):match("([^\n]+)\n?$"))
      assert.equals(n, r.count)
    end
    local _, ls = H.sh("ls -a " .. H.quote(d))
    assert.is_nil(ls:find(".tmp.", 1, true), ls)
    assert.equals(1, #entries(d))
    assert.same({ count = 7, cached = true, llvm = false }, run(d, s, 7))
  end)

  it("is listed and cleared by `denet cache ls|clear`", function()
    local d = cache_dir()
    run(d, counter("ls"), 10)
    local code, out, err = H.denet({ "cache", "ls" }, env(d))
    assert.equals(0, code, err)
    assert.matches("^" .. d:gsub("%p", "%%%0") .. ": 1 program\n", out)
    assert.matches("bpf%-%x+%.o%s+bpf%.c%s+[%d%.]+ KiB%s+1 functions, 3 tables\n", out)
    flip_byte(entries(d)[1])
    code, out = H.denet({ "cache", "ls" }, env(d))
    assert.equals(0, code)
    assert.matches("damaged: the entry's checksum does not match", out)
    code, out = H.denet({ "cache", "clear" }, env(d))
    assert.equals(0, code)
    assert.matches("^removed 1 file %([%d%.]+ KiB%) from ", out)
    assert.equals(0, #entries(d))
    code, out, err = H.denet({ "cache", "frob" }, env(d))
    assert.equals("", out)
    assert.equals(2, code)
    assert.equals("denet: cache: usage: denet cache ls|clear\n", err)
  end)

  it("is bypassed with --no-cache (and DENET_NO_CACHE=1)", function()
    local d = cache_dir()
    local s = counter("bypass")
    run(d, s, 10)
    assert.same({ count = 20, cached = false, llvm = true }, run(d, s, 20, 0, "--no-cache"))
    local code, out, err = H.denet({ "script", s, "30", "0" }, env(d) .. "DENET_NO_CACHE=1 ")
    assert.equals(0, code, err)
    local r = cjson.decode(out:match("([^\n]+)\n?$"))
    r.name = nil
    assert.same({ count = 30, cached = false, llvm = true }, r)
    -- and writes nothing
    local d2 = cache_dir()
    run(d2, s, 40, 0, "--no-cache")
    assert.equals(0, #entries(d2))
  end)

  it("serves every value of a run-time option with one entry: filters are config maps, not flags", function()
    local d = cache_dir()
    local function json_of(args)
      local code, out, err = H.denet(args, env(d))
      assert.equals(0, code, err)
      return cjson.decode(out)
    end
    -- off-CPU: -m filters blocks in the kernel; 20 ms naps pass 1 ms, not 30 ms
    local naps = {}
    for _, min_us in ipairs({ "1000", "30000", "2000" }) do
      local r = json_of({ "script", "offcpu", "--json", "-m", min_us, "--", H.fixture("sleep_loop"), "4", "20" })
      local n = 0
      for _, sc in ipairs(r.syscalls) do
        n = n + (sc.name == "clock_nanosleep" and sc.blocks or 0)
      end
      naps[#naps + 1] = n
    end
    assert.same({ 4, 0, 4 }, naps)
    assert.equals(1, #entries(d))
    -- syscalls: failed only, one errno, one syscall (syscall_mix: 777
    -- openat fail with ENOENT, among 100000 getppid)
    local function count(r, name)
      for _, row in ipairs(r.syscalls) do
        if row.name == name then
          return row.count
        end
      end
      return 0
    end
    local base = { "script", "syscalls", "--json", "-T", "50" }
    local function with(...)
      local a = { unpack(base) }
      for _, x in ipairs({ ... }) do
        a[#a + 1] = x
      end
      a[#a + 1] = "--"
      a[#a + 1] = H.fixture("syscall_mix")
      a[#a + 1] = "10"
      return json_of(a)
    end
    local r = with("-x")
    assert.same({ 777, 0 }, { count(r, "openat"), count(r, "getppid") })
    r = with("-e", "ENOENT")
    assert.same({ 777, 0 }, { count(r, "openat"), count(r, "getppid") })
    r = with("--syscall", "getppid")
    assert.same({ 0, 100010 }, { count(r, "openat"), count(r, "getppid") })
    r = with()
    -- (and the loader's own, which succeed)
    assert.is_true(count(r, "openat") > 777)
    assert.equals(100010, count(r, "getppid"))
    assert.equals(2, #entries(d))
  end)

  it("serves the built-in syscalls script: exact counts cold and warm, one entry", function()
    local d = cache_dir()
    for _, n in ipairs({ 4000, 6000 }) do
      local code, out, err = H.denet({ "script", "syscalls", "--json", "--", H.fixture("getppid_n"), tostring(n) },
        env(d))
      assert.equals(0, code, err)
      local got
      for _, r in ipairs(cjson.decode(out).syscalls) do
        if r.name == "getppid" then
          got = r.count
        end
      end
      assert.equals(n, got)
    end
    assert.equals(1, #entries(d))
  end)
end)
