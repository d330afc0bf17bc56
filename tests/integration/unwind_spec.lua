-- Unwind tables from .eh_frame (host/dn_unwind.c) and the walk over them
-- (denet.stacks.dwarf), on a fixture built without frame pointers and on
-- Debian's own binaries, against elfutils' eu-stack.
local core = require("denet.core")
local dwarf = require("denet.stacks.dwarf")
local unwind = require("denet.stacks.unwind")
local syms = require("denet.syms")

-- eu-stack's addresses of process pid's main thread, leaf first, and
-- their names (without symbol versions)
local function eu_stack(pid)
  local code, out, err = H.sh("eu-stack -p " .. pid)
  assert.equals(0, code, err)
  local addrs, names = {}, {}
  for a, name in out:gmatch("\n#%d+[ \t]+0x(%x+)[ \t]*([^\n]*)") do
    addrs[#addrs + 1] = tonumber(a, 16)
    names[#names + 1] = name:match("^([^@%s]*)")
  end
  return addrs, names
end

-- Start argv (through sh, which execs it), with its output read here:
-- { pid, line(), kill() }.
local function spawn(argv)
  local q = {}
  for i, a in ipairs(argv) do
    q[i] = H.quote(a)
  end
  local f = io.popen("echo $$; exec " .. table.concat(q, " ") .. " 2>&1")
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
    assert.matches("not an x86%-64 ELF file", why)
    -- a mapping gone before its file was opened (an exec, an unmap):
    -- nothing is kept of it, and the file's own path still gives a table
    local copy = os.tmpname()
    assert.equals(0, (H.sh("cp " .. H.quote(H.fixture("deep_nofp")) .. " " .. copy)))
    local key = core.uw_file_key(copy)
    assert.is_nil(dwarf.table_of("/proc/self/map_files/1000-2000", key, copy))
    assert.is_true(dwarf.table_of(copy, key).n > 10)
    os.remove(copy)
    -- a Go binary's own unwind data (.gopclntab) is not read: said so
    local go = os.tmpname()
    assert.equals(0, (H.sh("objcopy --remove-section .eh_frame --remove-section .eh_frame_hdr "
      .. "--add-section .gopclntab=/dev/null " .. H.quote(H.fixture("deep_nofp")) .. " " .. go)))
    none, why = core.uw_table(go)
    os.remove(go)
    assert.is_nil(none)
    assert.matches("a Go binary", why)
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

  -- Debian's own binaries, blocked, read by `offcpu --now` (the snapshot's
  -- walk through /proc/PID/mem) and by eu-stack: frame for frame, by
  -- address; by name where the file has symbols
  local cjson = require("cjson")
  local function now_vs_eu(pid, named)
    local code, out, err = H.denet({ "script", "offcpu", "--now", "--json", "-p", tostring(pid) })
    assert.equals(0, code, err)
    local r = cjson.decode(out)
    local t
    for _, th in ipairs(r.threads) do
      t = th.tid == pid and th or t
    end
    assert.is_not_nil(t, out)
    local got = {}
    for i = #t.user_addrs, 1, -1 do
      got[#got + 1] = tonumber(t.user_addrs[i])
    end
    local want, names = eu_stack(pid)
    assert.same(want, got)
    assert.is_true(#got >= 5, #got .. " frames")
    if named then
      -- our frames are root first, "-", then the kernel's
      local ours, py = {}, 0
      for i = #t.user_addrs, 1, -1 do
        -- (a frame eu-stack leaves unnamed is module+offset here; the
        -- Python frame a one-line program runs stands where its
        -- interpreter loop is)
        local f = t.frames[i]
        if f:match("^<module> %(<string>:1%)$") then
          f, py = "_PyEval_EvalFrameDefault", py + 1
        end
        ours[#ours + 1] = names[#ours + 1] == "" and f:match("^[^+;]+%+0x%x+$") and "" or f
      end
      assert.same(names, ours)
      assert.equals(named == "python" and 1 or 0, py)
    end
    -- the files, with their build-ids
    assert.is_string(r.modules["libc.so.6"].build_id)
    return t
  end

  -- pid of a process started by `sh -c CMD &` that has become comm, once
  -- it blocks (state S) in syscall nr
  local function started(cmd, comm, nr)
    local f = io.popen("sh -c " .. H.quote(cmd .. " >/dev/null 2>&1 & echo $!"))
    local pid = tonumber(f:read("*l"))
    f:close()
    for _ = 1, 1000 do
      local c = core.read_file("/proc/" .. pid .. "/comm") or ""
      local sc = core.read_file("/proc/" .. pid .. "/syscall") or ""
      if c:match("^" .. comm) and sc:match("^" .. nr .. " ")
          and (core.read_file("/proc/" .. pid .. "/stat") or ""):match("%) S ") then
        return pid
      end
      require("denet").sleep(0.01)
    end
    error(cmd .. " never blocked")
  end

  it("--now on Debian's sleep, git and python3 gives eu-stack's frames", function()
    local pid = started("exec /usr/bin/sleep 30", "sleep", 230)
    local ok, e = pcall(now_vs_eu, pid, false)
    os.execute("kill " .. pid)
    assert(ok, e)
    -- git waiting for input (a pipe nobody writes to)
    local repo = H.tmpdir()
    assert.equals(0, (H.sh("git init -q " .. H.quote(repo))))
    pid = started("sleep 60 | exec /usr/bin/git -C " .. H.quote(repo) .. " cat-file --batch", "git", 0)
    ok, e = pcall(now_vs_eu, pid, false)
    os.execute("kill " .. pid)
    assert(ok, e)
    -- python3: the interpreter's C frames, named, and its Python frame
    pid = started("exec /usr/bin/python3 -c 'import time; time.sleep(30)'", "python3", 230)
    ok, e = pcall(now_vs_eu, pid, "python")
    os.execute("kill " .. pid)
    assert(ok, e)
  end)

  it("a PLT stub's rule: the return address at sp, and at sp + 8 once the stub pushed", function()
    local ffi = require("ffi")
    local t = dwarf.table_of(H.fixture("deep_nofp"), "plt-test")
    local plt
    for i = 0, t.n - 1 do
      if t.rows[i].kind == 3 then -- DN_UW_PLT
        plt = t.rows[i]
      end
    end
    assert.is_not_nil(plt, "no PLT row")
    -- a stub of .plt past the first (16 bytes each), at bias 0
    local stub = plt.pc + 16
    local maps = { { start = 0, ["end"] = 2 ^ 40, bias = 0, table = t } }
    local sp = 0x7fff0000
    local words = { [sp] = 0x1111, [sp + 8] = 0x2222 }
    local function read(a)
      return words[a]
    end
    -- (the words above are not code: the walk stops at the next frame)
    local a1 = dwarf.unwind(maps, read, stub, sp, nil)
    assert.equals(0x1111, a1[2])
    local a2 = dwarf.unwind(maps, read, stub + plt.aux, sp, nil)
    assert.equals(0x2222, a2[2])
    assert.is_true(ffi.sizeof("struct dn_uw_row") == 12)
  end)

  -- the user frames of an offcpu report's sleeps of comm, each stack's
  -- frames up to "-" joined, with their block counts
  local function sleeps(r, comm)
    local out = {}
    for _, st in ipairs(r.stacks) do
      if st.category == "sleep" and st.comm == comm then
        local user = table.concat(st.frames, ";"):match("^(.-);%-;")
        out[user] = (out[user] or 0) + st.count
      end
    end
    return out
  end

  local offcpu = H.offcpu

  it("offcpu: programs without frame pointers, every frame to _start from the first block", function()
    for _, c in ipairs({
      { "deep_nofp", "_start;__libc_start_main;__libc_start_call_main;main;level1;level2;level3;__nanosleep;"
        .. "clock_nanosleep" },
      -- blocking inside a signal handler: through the signal frame
      { "sig_nofp", "_start;__libc_start_main;__libc_start_call_main;main;trigger;raise;"
        .. "__pthread_kill_implementation;__restore_rt;handler;in_handler;__nanosleep;clock_nanosleep" },
      -- C++, names demangled, functions inlined (the std::function call,
      -- sleep_for) as frames of their own
      { "cxx_nofp", "_start;__libc_start_main;__libc_start_call_main;main;fx::Sleeper::run(int);"
        .. "std::function<void ()>::operator()() const;fx::nap(long);"
        .. "void std::this_thread::sleep_for<long, std::ratio<1l, 1000l> >(std::chrono::duration<long, "
        .. "std::ratio<1l, 1000l> > const&);__nanosleep;clock_nanosleep" },
    }) do
      for _, mode in ipairs({ "on", "verify" }) do
        -- (blocks long enough for user space to read the process's mappings
        -- while the first is blocked, on a loaded machine)
        local r = offcpu({ "--stack-reuse", mode }, { H.fixture(c[1]), "6", "60" })
        local got = sleeps(r, c[1])
        assert.same({ [c[2]] = 6 }, got)
        assert.equals(0, r.ustack_reuse.wrong, c[1])
        assert.is_string(r.modules[c[1]].build_id)
      end
    end
  end)

  it("offcpu: a forked process's stacks stay whole when its parent execs another program, and stacks before "
    .. "an exec keep their names", function()
    -- the subshell shares its parent's mappings in the kernel until the
    -- parent execs; without address randomization python3 then maps its
    -- code where dash's was, so the subshell's later waits would be walked
    -- by python3's rules
    local script = "sleep 0.3; (for i in 1 2 3 4; do sleep 0.2; done) & "
      .. "exec /usr/bin/python3 -c 'import time; time.sleep(1.2)'"
    local r = offcpu({}, { "setarch", "-R", "/bin/sh", "-c", script })
    local n = 0
    -- (copies of a stack whose image the process left, by its exec, before
    -- a slow user space read its mappings are counted, and first-frame
    -- only: a sanitizer build falls that far behind)
    local unread = r.unwind.unread
    for _, st in ipairs(r.stacks) do
      local all = table.concat(st.frames, ";")
      -- (the parent's wait shows the name it has at the end, python3's)
      if (st.comm == "sh" or st.comm == "python3") and all:find(";do_wait;", 1, true) then
        local user = all:match("^(.-);%-;")
        if user:find("^%[truncated%];[^;]*$") and unread >= st.count then
          unread = unread - st.count
        else
          assert.matches("^dash%+0x%x+;__libc_start_main;__libc_start_call_main;dash%+0x%x+;.*;wait4$", user)
        end
        -- (a preemption inside wait4 on a busy machine is a runqueue
        -- block with the same stacks, not another wait)
        if st.category ~= "runqueue" then
          n = n + st.count
        end
      end
    end
    -- the subshell's four waits, and its parent's for the first sleep,
    -- named from dash's mappings although the process runs python3 now
    assert.equals(5, n)
  end)

  it("offcpu: tables past --unwind-max-mb are dropped, and their stacks marked truncated", function()
    local r = offcpu({ "--unwind-max-mb", "0.05" }, { H.fixture("deep_nofp"), "3", "10" })
    local n = 0
    for user, count in pairs(sleeps(r, "deep_nofp")) do
      assert.matches("^%[truncated%];", user)
      n = n + count
    end
    assert.equals(3, n)
    assert.is_true(r.truncated_stacks >= 3)
  end)

  it("a table the kernel's map has no room for is not loaded at all, and said so once", function()
    local ffi = require("ffi")
    local records = require("denet.records")
    local libc = "/lib/x86_64-linux-gnu/libc.so.6"
    local ks, vs = ffi.sizeof(records.type("dn_uw_page_key")), ffi.sizeof(records.type("dn_uw_page"))
    local fd = assert(core.map_create(1, "uw_small", ks, vs, 8, 0))
    local function count()
      local _, _, n = core.map_dump(fd, ks, vs)
      return n
    end
    local t = dwarf.table_of(libc, core.uw_file_key(libc))
    -- (libc's table makes hundreds of pages: 8 fit)
    local keys, why = core.uw_load(fd, 7, t.hold)
    assert.is_nil(keys)
    assert.is_string(why)
    assert.equals(0, count())
    -- the unwinder: no file id, a message once, counted
    local said = {}
    local stderr = io.stderr
    io.stderr = { write = function(_, m) said[#said + 1] = m end } -- luacheck: ignore
    local u = setmetatable({ pages = { fd = fd }, loaded = {}, next_file = 7, bytes = 0, dropped = 0, tick = 0,
      max_bytes = 2 ^ 30, page_bytes = 1024 }, dwarf.Unwinder)
    local a, b = u:load("k1", t, libc), u:load("k2", t, "/other")
    io.stderr = stderr -- luacheck: ignore
    core.close_fd(fd)
    assert.same({ 0, 0 }, { a, b })
    assert.equals(1, #said)
    assert.matches("unwind table of " .. libc:gsub("%p", "%%%0") .. " could not be loaded", said[1])
    assert.equals(2, u.not_loaded)
  end)

  it("--now in a signal handler and in C++ gives eu-stack's frames", function()
    for _, c in ipairs({ "sig_nofp", "cxx_nofp" }) do
      local pid = started("exec " .. H.quote(H.fixture(c)) .. " 1 30000", c, 230)
      local ok, e = pcall(now_vs_eu, pid, false)
      os.execute("kill " .. pid)
      assert(ok, e)
    end
  end)

  it("symbols of a stripped program from its debug file: under .build-id, and from a debuginfod server", function()
    local dir = H.tmpdir()
    local exe, dbg = dir .. "/stripped", dir .. "/stripped.debug"
    assert.equals(0, (H.sh(string.format("cp %s %s && objcopy --only-keep-debug %s %s && strip -s %s",
      H.quote(H.fixture("deep_nofp")), H.quote(exe), H.quote(exe), H.quote(dbg), H.quote(exe)))))
    local bid = core.uw_build_id(exe)
    local want = "_start;__libc_start_main;__libc_start_call_main;main;level1;level2;level3;__nanosleep;"
      .. "clock_nanosleep"
    -- stripped, no debug file: module+offset, and the build-id to look it up
    local r = offcpu({}, { exe, "2", "10" })
    local user = next(sleeps(r, "stripped"))
    assert.matches("^stripped%+0x%x+;__libc_start_main;", user)
    assert.equals(bid, r.modules.stripped.build_id)
    -- its debug file where debuggers look for it
    local bdir = "/usr/lib/debug/.build-id/" .. bid:sub(1, 2)
    local bpath = bdir .. "/" .. bid:sub(3) .. ".debug"
    assert.is_nil(core.stat(bpath), "a debug file is there already")
    os.execute("mkdir -p " .. bdir .. " && cp " .. H.quote(dbg) .. " " .. bpath)
    local ok, e = pcall(function()
      assert.same({ [want] = 2 }, sleeps(offcpu({}, { exe, "2", "10" }), "stripped"))
    end)
    os.remove(bpath)
    assert(ok, e)
    -- from Debian's debuginfod, serving the debug file on loopback
    local srv = H.tmpdir()
    os.execute("cp " .. H.quote(dbg) .. " " .. H.quote(srv))
    local port = 20000 + core.ids().pid % 20000
    local d = io.popen(string.format("debuginfod -F %s -p %d -d %s/db.sqlite >/dev/null 2>&1 & echo $!",
      H.quote(srv), port, H.quote(srv)))
    local dpid = d:read("*l")
    d:close()
    ok, e = pcall(function()
      local url = string.format("http://127.0.0.1:%d", port)
      -- ready once it serves the file (it scans the folder first)
      for _ = 1, 600 do
        local c = H.sh(string.format("curl -sf -o /dev/null %s/buildid/%s/debuginfo", url, bid))
        if c == 0 then
          break
        end
        require("denet").sleep(0.05)
      end
      local code, out, err = H.denet({ "script", "offcpu", "--json", "--", exe, "2", "10" },
        string.format("DEBUGINFOD_URLS=%s DEBUGINFOD_CACHE_PATH=%s ", url, H.quote(H.tmpdir())))
      assert.equals(0, code, err)
      assert.same({ [want] = 2 }, sleeps(cjson.decode(out), "stripped"))
    end)
    os.execute("kill " .. dpid)
    assert(ok, e)
  end)

  it("an inlined function is a frame of its own, with the lines of each frame, as eu-stack -i -s shows", function()
    -- the fixture's lines the frames must show
    local src = H.slurp(H.source .. "/tests/fixtures/nofp/inline_nofp.c")
    local line_of = {}
    local n = 0
    for l in (src .. "\n"):gmatch("([^\n]*)\n") do
      n = n + 1
      local mark = l:match("LINE%-([%w_]+)")
      if mark then
        line_of[mark] = n
      end
    end
    local r = offcpu({}, { H.fixture("inline_nofp"), "3", "60" })
    local st
    for _, x in ipairs(r.stacks) do
      if x.category == "sleep" and x.comm == "inline_nofp" then
        st = x
      end
    end
    assert.is_not_nil(st)
    assert.equals(3, st.count)
    local user = table.concat(st.frames, ";"):match("^(.-);%-;")
    assert.equals("_start;__libc_start_main;__libc_start_call_main;main;outer;wait_here;__nanosleep;clock_nanosleep",
      user)
    assert.equals("inline_nofp.c:" .. line_of.outer, st.user_lines[5])
    assert.equals("inline_nofp.c:" .. line_of.wait_here, st.user_lines[6])
    -- the text report shows them, and a pprof profile has them
    local pb = H.tmpfile(".pb.gz")
    local code, text = H.denet({ "script", "offcpu", "--pprof", pb, "--", H.fixture("inline_nofp"), "1", "60" })
    assert.equals(0, code)
    assert.matches("wait_here %(inline_nofp%.c:" .. line_of.wait_here .. "%)", text)
    local pc, decoded, perr = H.sh("zcat " .. H.quote(pb) .. " | protoc --decode perftools.profiles.Profile -I "
      .. H.quote(H.source .. "/proto") .. " " .. H.quote(H.source .. "/proto/profile.proto"))
    assert.equals(0, pc, perr)
    assert.matches('string_table: "inline_nofp.c"', decoded, 1, true)
    assert.matches("\n    line: " .. line_of.wait_here .. "\n", decoded, 1, true)
    assert.matches("\n    line: " .. line_of.outer .. "\n", decoded, 1, true)
    -- eu-stack -i -s on the process blocked: the same functions and lines
    local pid = started("exec " .. H.quote(H.fixture("inline_nofp")) .. " 1 30000", "inline_nofp", 230)
    local ok, e = pcall(function()
      local c, out, err = H.sh("eu-stack -i -s -p " .. pid)
      assert.equals(0, c, err)
      local eu = {}
      for name, file, line in out:gmatch("\n#%d+[ \t]+0x%x+[ \t]+([%w_]+)\n[ \t]+([^\n:]+):(%d+)") do
        if file:match("inline_nofp%.c$") then
          eu[#eu + 1] = name .. " " .. line
        end
      end
      local c2, out2, err2 = H.denet({ "script", "offcpu", "--now", "--json", "-p", tostring(pid) })
      assert.equals(0, c2, err2)
      local t = cjson.decode(out2).threads[1]
      local ours = {}
      for i = #t.user_lines, 1, -1 do
        if t.user_lines[i]:match("^inline_nofp%.c:") then
          ours[#ours + 1] = t.frames[i] .. " " .. t.user_lines[i]:match(":(%d+)$")
        end
      end
      assert.same(eu, ours)
      assert.equals(3, #ours) -- wait_here, outer, main
    end)
    os.execute("kill " .. pid)
    assert(ok, e)
  end)
end)
