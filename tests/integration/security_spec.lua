-- What root loads: scripts, plugins, the modules they require (Lua and
-- native) and BPF C must belong to root or the invoking user, down a chain
-- of folders no one else can write; the current folder is never searched;
-- built-in names mean the built-ins. Each case plants another user's
-- (nobody's) code that would create a marker file, and checks the refusal
-- and that the marker never appears.
local _ -- results a test does not look at
local NOBODY = 65534

local function sh(fmt, ...)
  local cmd = string.format(fmt, ...)
  local code = H.sh(cmd)
  assert(code == 0, "failed: " .. cmd)
end

-- A fresh folder of the test's, with its mode and owner.
local function folder(mode, uid)
  local d = H.tmpfile("-d")
  sh("mkdir -m %s %s", mode, H.quote(d))
  if uid then
    sh("chown %d %s", uid, H.quote(d))
  end
  return d
end

local function put(path, text, uid, mode)
  H.write(path, text)
  sh("chmod %s %s", mode or "644", H.quote(path))
  if uid then
    sh("chown %d %s", uid, H.quote(path))
  end
  return path
end

-- Lua code that, if it ever runs, writes the marker and says so.
local function payload(marker)
  return string.format([[
local f = io.open(%q, "w") f:write("attacker code ran as root") f:close()
print("attacker code ran as root")
return { description = "x", on_end = function() end }
]], marker)
end

local function exists(p)
  return require("denet.sys").exists(p)
end

local function one_line(err)
  local n = select(2, err:gsub("\n", ""))
  assert.equals(1, n, err)
end

local function in_dir(dir, env)
  return "cd " .. H.quote(dir) .. " && " .. (env or "")
end

describe("the current folder", function()
  it("never shadows a built-in: ./offcpu.lua is not run by `denet script offcpu`", function()
    local d = folder("755", NOBODY)
    local marker = H.tmpfile(".marker")
    put(d .. "/offcpu.lua", payload(marker), NOBODY)
    local code, out = H.denet({ "script", "offcpu", "--help" }, in_dir(d))
    assert.equals(0, code)
    assert.matches("usage: denet script offcpu", out)
    assert.is_false(exists(marker))
    -- named by its path it is another user's file: refused, one line
    local err
    code, out, err = H.denet({ "script", "./offcpu.lua" }, in_dir(d))
    assert.equals(2, code)
    assert.equals("", out)
    one_line(err)
    assert.matches("^denet: refusing to load %./offcpu%.lua: its folder " .. d:gsub("%p", "%%%0") .. " belongs to "
      .. "nobody %(uid 65534%), not to root %(fix: chown root .*, or use a copy in a folder of yours; "
      .. "%-%-allow%-untrusted overrides%)", err)
    assert.is_false(exists(marker))
    -- the file itself judged: another user's file in a folder of root's
    local rd = folder("755")
    put(rd .. "/offcpu.lua", payload(marker), NOBODY)
    code, out, err = H.denet({ "script", "./offcpu.lua" }, in_dir(rd))
    assert.equals(2, code)
    assert.equals("", out)
    one_line(err)
    assert.matches("^denet: refusing to load %./offcpu%.lua: it belongs to nobody %(uid 65534%), not to root "
      .. "%(fix: chown root " .. rd:gsub("%p", "%%%0") .. "/offcpu%.lua", err)
    assert.is_false(exists(marker))
  end)

  it("is not on Lua's module paths: ./cjson.so and ./x.lua are never loaded", function()
    local d = folder("755", NOBODY)
    local marker = H.tmpfile(".marker")
    sh("cp %s %s", H.quote(H.fixture("marker_module.so")), H.quote(d .. "/cjson.so"))
    sh("chown %d %s", NOBODY, H.quote(d .. "/cjson.so"))
    put(d .. "/x.lua", payload(marker), NOBODY)
    local env = "DENET_TEST_MARKER=" .. H.quote(marker) .. " "
    local code, _, err = H.denet({ "run", "-q", "--", "true" }, in_dir(d, env))
    assert.equals(0, code, err)
    assert.is_false(exists(marker))
    -- a plugin of root's that requires x: not found, the current folder is not searched
    local rd = folder("755")
    local p = put(rd .. "/needs-x.lua", [[
local x = require("x")
return { description = "needs x", on_end = function() end }
]])
    local out
    code, out, err = H.denet({ "run", "-q", "--plugin", p, "--", "true" }, in_dir(d, env))
    assert.equals(2, code)
    assert.matches("module 'x' not found", err)
    assert.matches("no file '/", err)
    assert.not_matches("no file '%./x%.lua'", err)
    assert.equals("", out)
    assert.is_false(exists(marker))
  end)

  it("package.path and package.cpath hold only absolute entries", function()
    local s = H.script([[
for _, f in ipairs({ "path", "cpath" }) do
  for e in package[f]:gmatch("[^;]+") do
    if e:sub(1, 1) ~= "/" then print("relative", f, e) end
  end
end
print("checked")
]])
    local code, out = H.denet({ "script", s })
    assert.equals(0, code)
    assert.equals("checked\n", out)
  end)
end)

describe("LUA_PATH and LUA_CPATH", function()
  it("drop relative entries and folders of other users with one line each", function()
    local d = folder("755", NOBODY)
    local marker = H.tmpfile(".marker")
    put(d .. "/x.lua", payload(marker), NOBODY)
    sh("cp %s %s", H.quote(H.fixture("marker_module.so")), H.quote(d .. "/cjson.so"))
    sh("chown %d %s", NOBODY, H.quote(d .. "/cjson.so"))
    local s = H.script([[print(pcall(require, "x")) print(require("cjson").encode({ 1 }))]])
    local env = string.format("DENET_TEST_MARKER=%s LUA_PATH=%s LUA_CPATH=%s ", H.quote(marker),
      H.quote("./?.lua;" .. d .. "/?.lua;;"), H.quote(d .. "/?.so;;"))
    local code, out, err = H.denet({ "script", s }, in_dir(d, env))
    assert.equals(0, code, err)
    assert.matches("^false\tmodule 'x' not found", out)
    assert.matches("%[1%]\n$", out) -- the real cjson
    local lines = {}
    for l in err:gmatch("[^\n]+") do
      lines[#lines + 1] = l
    end
    assert.equals(3, #lines, err)
    assert.equals("denet: ignoring LUA_PATH entry './?.lua': relative entries are never searched (use an "
      .. "absolute path)", lines[1])
    assert.matches("^denet: ignoring LUA_PATH entry '.*/%?%.lua': its folder .* belongs to nobody %(uid 65534%), "
      .. "not to root", lines[2])
    assert.matches("^denet: ignoring LUA_CPATH entry '.*/%?%.so': its folder .* belongs to nobody", lines[3])
    assert.is_false(exists(marker))
  end)

  it("a module file of another user in a folder of root's is refused, with its fix", function()
    local rd = folder("755")
    local marker = H.tmpfile(".marker")
    put(rd .. "/y.lua", payload(marker), NOBODY)
    local s = H.script([[require("y")]])
    local code, out, err = H.denet({ "script", s }, "LUA_PATH=" .. H.quote(rd .. "/?.lua;;") .. " ")
    assert.equals(2, code)
    assert.equals("", out)
    one_line(err)
    assert.matches("^denet: refusing to load .*/y%.lua: it belongs to nobody", err)
    assert.is_false(exists(marker))
  end)

  it("a module beside the script is found, and judged the same way", function()
    local rd = folder("755")
    local marker = H.tmpfile(".marker")
    put(rd .. "/mine_helper.lua", "return { answer = 42 }")
    put(rd .. "/theirs_helper.lua", payload(marker), NOBODY)
    local s = put(rd .. "/main.lua", [[print(require("mine_helper").answer)]])
    -- from another folder: the script's own is searched, not the current one
    local code, out, err = H.denet({ "script", s }, "cd / && ")
    assert.equals(0, code, err)
    assert.equals("42\n", out)
    s = put(rd .. "/main2.lua", [[require("theirs_helper")]])
    code, out, err = H.denet({ "script", s }, "cd / && ")
    assert.equals(2, code)
    assert.equals("", out)
    one_line(err)
    assert.matches("^denet: refusing to load .*/theirs_helper%.lua: it belongs to nobody", err)
    assert.is_false(exists(marker))
  end)
end)

describe("plugins and scripts of other users", function()
  it("are refused as root, accepted under their SUDO_UID and with --allow-untrusted", function()
    local d = folder("755", NOBODY)
    local marker = H.tmpfile(".marker")
    local p = put(d .. "/p.lua", payload(marker), NOBODY)
    local code, out, err = H.denet({ "run", "-q", "--plugin", p, "--", "true" })
    assert.equals(2, code)
    assert.equals("", out)
    one_line(err)
    assert.matches("^denet: refusing to load " .. p:gsub("%p", "%%%0") .. ": its folder .* belongs to nobody "
      .. "%(uid 65534%), not to root", err)
    assert.is_false(exists(marker))
    -- the same user under sudo: their own files
    code, out, err = H.denet({ "run", "-q", "--plugin", p, "--", "true" }, "SUDO_UID=65534 ")
    assert.equals(0, code, err)
    assert.matches("attacker code ran as root", out)
    assert.is_true(exists(marker))
    os.remove(marker)
    -- another SUDO_UID: still refused, and the message names both
    code, _, err = H.denet({ "run", "-q", "--plugin", p, "--", "true" }, "SUDO_UID=4242 ")
    assert.equals(2, code)
    assert.matches("belongs to nobody %(uid 65534%), not to root or uid 4242", err)
    -- the explicit override
    code, out = H.denet({ "run", "-q", "--allow-untrusted", "--plugin", p, "--", "true" })
    assert.equals(0, code)
    assert.matches("attacker code ran as root", out)
    os.remove(marker)
    code, out = H.denet({ "script", "--allow-untrusted", p, "--", "true" })
    assert.equals(0, code)
    assert.matches("attacker code ran as root", out)
    assert.is_true(exists(marker))
  end)

  it("a symbolic link in a folder everyone can write is refused, even to root's own plugin", function()
    local rd = folder("755")
    local marker = H.tmpfile(".marker")
    local good = put(rd .. "/good.lua", payload(marker))
    local w = folder("777")
    sh("ln -s %s %s", H.quote(good), H.quote(w .. "/p.lua"))
    local code, _, err = H.denet({ "run", "-q", "--plugin", w .. "/p.lua", "--", "true" })
    assert.equals(2, code)
    one_line(err)
    assert.matches("its folder .* is writable by everyone %(fix: chmod go%-w ", err)
    assert.is_false(exists(marker))
    -- in a sticky folder (like /tmp) a link of another user is refused too
    local st = folder("1777")
    sh("setpriv --reuid=%d --regid=%d --clear-groups ln -s %s %s", NOBODY, NOBODY, H.quote(good),
      H.quote(st .. "/p.lua"))
    code, _, err = H.denet({ "run", "-q", "--plugin", st .. "/p.lua", "--", "true" })
    assert.equals(2, code)
    assert.matches("the symbolic link .*/p%.lua belongs to nobody", err)
    assert.is_false(exists(marker))
    -- while root's own link there is followed
    sh("ln -s %s %s", H.quote(good), H.quote(st .. "/q.lua"))
    code = H.denet({ "run", "-q", "--plugin", st .. "/q.lua", "--", "true" })
    assert.equals(0, code)
    assert.is_true(exists(marker))
  end)

  it("a folder swapped for a link between check and load: what was checked is what runs", function()
    -- r/d is root's folder with a good file; r/e is a link to another
    -- user's folder with a bad one. swap_loop exchanges the two names
    -- without end while one denet loads r/d/p.lua thousands of times.
    local r = folder("755")
    sh("mkdir -m 755 %s", H.quote(r .. "/d"))
    put(r .. "/d/p.lua", "return 'good'")
    local evil = folder("755", NOBODY)
    put(evil .. "/p.lua", "return 'evil'", NOBODY)
    sh("ln -s %s %s", H.quote(evil), H.quote(r .. "/e"))
    local s = H.script(string.format([[
local core = require("denet.core")
local n = { good = 0, evil = 0, refused = 0, other = 0 }
local t0 = core.monotonic()
repeat
  for _ = 1, 200 do
    local f, err = loadfile(%q)
    if f then
      local v = f()
      n[v] = n[v] + 1
    elseif err:match("^refusing to load .*belongs to nobody") then
      n.refused = n.refused + 1
    else
      n.other = n.other + 1
    end
  end
until (n.good > 100 and n.refused > 100) or core.monotonic() - t0 > 20
print(n.good, n.evil, n.refused)
]], r .. "/d/p.lua"))
    local rd = io.popen(string.format("%s %s %s & echo $!", H.quote(H.fixture("swap_loop")),
      H.quote(r .. "/d"), H.quote(r .. "/e")))
    -- the fixture says "ready" and the shell its pid, in either order
    local first, second = rd:read("*l"), rd:read("*l")
    local pid = first == "ready" and second or first
    local code, out, err = H.denet({ "script", s })
    os.execute("kill " .. tonumber(pid))
    rd:close()
    assert.equals(0, code, err)
    local good, bad, refused = out:match("^(%d+)\t(%d+)\t(%d+)")
    assert.equals(0, tonumber(bad), out)
    assert.is_true(tonumber(good) > 100, out)
    assert.is_true(tonumber(refused) > 100, out)
  end)
end)

describe("the script search path", function()
  it("names the built-ins first; a file of a built-in's name elsewhere gets a note and is not used", function()
    local d = folder("755")
    local marker = H.tmpfile(".marker")
    put(d .. "/syscalls.lua", payload(marker))
    put(d .. "/mine.lua", "print('mine ran')")
    local env = "DENET_PATH=" .. H.quote(d) .. " "
    local code, out, err = H.denet({ "script", "syscalls", "--help" }, env)
    assert.equals(0, code)
    assert.matches("usage: denet script syscalls", out)
    one_line(err)
    assert.matches("^denet: " .. d:gsub("%p", "%%%0") .. "/syscalls%.lua has the name of a built%-in; 'syscalls' "
      .. "means the built%-in %(run that file by its path%)", err)
    assert.is_false(exists(marker))
    code, out = H.denet({ "script", "mine" }, env)
    assert.equals(0, code)
    assert.equals("mine ran\n", out)
  end)

  it("leaves out DENET_PATH folders of other users and relative ones, with one line each", function()
    local d = folder("755", NOBODY)
    local marker = H.tmpfile(".marker")
    put(d .. "/theirs.lua", payload(marker), NOBODY)
    local code, _, err = H.denet({ "script", "theirs" }, "DENET_PATH=" .. H.quote(d .. ":rel/dir") .. " ")
    assert.equals(2, code)
    assert.matches("denet: ignoring DENET_PATH entry '" .. d:gsub("%p", "%%%0") .. "': its folder .* belongs "
      .. "to nobody", err)
    assert.matches("denet: ignoring DENET_PATH entry 'rel/dir': relative entries are never searched", err)
    assert.matches("no script named 'theirs'", err)
    assert.is_false(exists(marker))
  end)
end)

describe("BPF C", function()
  it("a src_file, and a quoted include of it, of another user are refused", function()
    local d = folder("755", NOBODY)
    local theirs = put(d .. "/prog.c", "int x;\n", NOBODY)
    local s = H.script(string.format([[
local BPF = require("denet.bpf")
BPF.new{ src_file = %q }
]], theirs))
    local code, _, err = H.denet({ "script", s })
    assert.equals(2, code)
    one_line(err)
    assert.matches("refusing to load " .. theirs:gsub("%p", "%%%0") .. ": its folder .* belongs to nobody", err)
    -- root's source that includes a header from the other user's folder
    local rd = folder("755")
    put(d .. "/evil.h", "#define EVIL 1\n", NOBODY)
    local mine = put(rd .. "/prog.c", '#include "evil.h"\nint x;\n')
    s = H.script(string.format([[
local BPF = require("denet.bpf")
BPF.new{ src_file = %q, cflags = { "-I%s" } }
]], mine, d))
    code, _, err = H.denet({ "script", s })
    assert.equals(2, code)
    one_line(err)
    assert.matches("refusing to load .*/evil%.h: its folder .* belongs to nobody", err)
  end)

  it("quoted includes beside the source are compiled from what was read, errors at the header's line", function()
    local rd = folder("755")
    put(rd .. "/vals.h", "#pragma once\n#define NVALS 4\nstatic const int broken = ;\n")
    local src = put(rd .. "/prog.c", [[
#include "vals.h"
#include "vals.h"
BPF_ARRAY(vals, u64, NVALS);
]])
    local s = H.script(string.format([[
local BPF = require("denet.bpf")
BPF.new{ src_file = %q }
]], src))
    local code, _, err = H.denet({ "script", s })
    assert.equals(1, code)
    assert.matches(rd:gsub("%p", "%%%0") .. "/vals%.h:3:%d+: error: expected expression", err)
    put(rd .. "/vals.h", "#pragma once\n#define NVALS 4\n")
    s = H.script(string.format([[
local BPF = require("denet.bpf")
local b = BPF.new{ src_file = %q }
local n = 0
for _ in b:get_table("vals"):items() do n = n + 1 end
print(n)
]], src))
    local out
    code, out, err = H.denet({ "script", s })
    assert.equals(0, code, err)
    assert.equals("4\n", out)
  end)
end)

describe("denet's own library", function()
  it("is judged like any other code: an installed tree another user owns is refused", function()
    local prefix = H.tmpfile("-prefix")
    local code, _, err = H.sh(string.format("cmake --install %s --prefix %s", H.quote(os.getenv("DENET_BUILD")),
      H.quote(prefix)))
    assert.equals(0, code, err)
    local out
    code, out = H.sh(H.quote(prefix .. "/bin/denet") .. " version")
    assert.equals(0, code)
    assert.matches("^denet ", out)
    sh("chown -R %d %s", NOBODY, H.quote(prefix .. "/share/denet/lib"))
    code, out, err = H.sh(H.quote(prefix .. "/bin/denet") .. " version")
    assert.equals(2, code)
    assert.equals("", out)
    one_line(err)
    assert.matches("^denet: refusing to load " .. prefix:gsub("%p", "%%%0") .. "/share/denet/lib/denet/cli%.lua: "
      .. "its folder .*/lib belongs to nobody", err)
  end)
end)

describe("without privileges", function()
  it("a user loads their own files freely", function()
    local d = folder("755", NOBODY)
    local s = put(d .. "/own.lua", "print(require('denet.core').trust_policy().enforced)", NOBODY)
    local code, out, err = H.denet_as_nobody({ "script", s })
    assert.equals(0, code, err)
    assert.equals("false\n", out)
  end)
end)
