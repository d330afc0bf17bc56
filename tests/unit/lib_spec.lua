-- Pure-Lua pieces of the library: errors, CPU lists, the ring buffer
-- rewrite, command dispatch.
local errors = require("denet.errors")
local sys = require("denet.sys")
local BPF = require("denet.bpf")
local cli = require("denet.cli")

describe("errors", function()
  it("user errors carry a message and an exit code", function()
    local ok, e = pcall(errors.raise, "no such PID 4", 2)
    assert.is_false(ok)
    assert.is_true(errors.is_user(e))
    assert.equals("no such PID 4", tostring(e))
    assert.equals(2, e.code)
    assert.is_false(errors.is_interrupt(e))
    assert.is_false(errors.is_user("a string"))
  end)
end)

describe("sys.parse_cpu_list", function()
  it("expands ranges and lists", function()
    assert.same({ 0, 1, 2, 3, 5, 8, 9 }, sys.parse_cpu_list("0-3,5,8-9\n"))
    assert.same({ 0 }, sys.parse_cpu_list("0"))
    assert.same({}, sys.parse_cpu_list(""))
  end)

  it("the machine's CPUs are at least the online ones", function()
    assert.is_true(sys.possible_cpus() >= #sys.online_cpus())
  end)
end)

describe("ring buffer loss rewrite", function()
  it("wraps output and reserve calls without moving lines", function()
    local src = "BPF_RINGBUF_OUTPUT(ev, 8);\nint f(void *c) {\n  ev.ringbuf_output(&x, sizeof(x), 0);\n"
      .. "  void *p = ev.ringbuf_reserve(16);\n  myev.ringbuf_output(&x, 1, 0);\n}\n"
    local out, index = BPF._count_ringbuf_losses(src)
    assert.same({ ev = 0 }, index)
    local _, n_in = src:gsub("\n", "")
    local _, n_out = out:gsub("\n", "")
    assert.equals(n_in, n_out)
    assert.matches("BPF_PERCPU_ARRAY%(__denet_rb_lost, u64, 1%)", out)
    assert.matches("if %(__dn_r%) __denet_rb_lost_inc%(0%)", out)
    assert.matches("if %(!__dn_p%) __denet_rb_lost_inc%(0%)", out)
    -- another name that merely ends the same way is left alone
    assert.matches("\n  myev%.ringbuf_output%(&x, 1, 0%);", out)
  end)

  it("leaves programs without ring buffers untouched", function()
    local src = "BPF_PERF_OUTPUT(ev);\n"
    local out, index = BPF._count_ringbuf_losses(src)
    assert.equals(src, out)
    assert.is_nil(index)
  end)
end)

describe("cli", function()
  it("runs a script file with arg set and returns its exit code", function()
    local path = H.script("return #arg + 40")
    assert.equals(42, cli.run_script(path, { "x", "y" }))
  end)

  it("rejects unknown commands as a user error", function()
    local ok, e = pcall(cli.main, { [0] = "denet", "nope" })
    assert.is_false(ok)
    assert.is_true(errors.is_user(e))
    assert.equals(2, e.code)
  end)
end)

describe("the man page", function()
  it("is generated from the declared commands and options, and groff reads it without a warning", function()
    local page = require("denet.man").page()
    local path = H.write(H.tmpfile(".1"), page)
    local code, out, err = H.sh("groff -man -ww -z " .. H.quote(path))
    assert.equals(0, code, err)
    assert.equals("", out .. err)
    local args = require("denet.args")
    for _, name in ipairs({ "monitor", "offcpu", "syscalls" }) do
      local spec = assert(require("denet.plugins").load_file(H.source .. "/scripts/" .. name .. ".lua"))()
      for _, a in ipairs(spec.args) do
        if not a.hidden then
          local flag = args.long_flag(a):gsub("%-", "\\%-")
          assert.truthy(page:find("\\fB" .. flag .. "\\fR", 1, true), name .. ": " .. args.long_flag(a))
        end
      end
    end
    for _, c in ipairs(require("denet.cli").COMMANDS) do
      assert.truthy(page:find(c[1]:gsub("%-", "\\%-"), 1, true), c[1])
    end
  end)
end)

describe("the compile cache's key", function()
  local core = require("denet.core")
  local cache = require("denet.cache")

  it("covers the kernel, its BTF and headers, libbcc, the CPUs and denet's version", function()
    local env = cache._environment()
    local u = core.uname()
    for _, part in ipairs({ u.release, u.version, core.version,
      core.file_identity("/sys/kernel/btf/vmlinux"),
      core.file_identity(core.libbcc_dir() .. "/libbcc.so.0", 0),
      core.file_identity(core.libbcc_dir() .. "/libbcc_bpf.so.0", 0),
      sys.kernel_headers(),
      core.read_file("/sys/devices/system/cpu/possible") }) do
      assert.truthy(env:find(part, 1, true), part)
    end
    -- the BTF's identity has its size and a CRC of its content
    assert.matches("^%d+:[%d%.]+:%x+$", core.file_identity("/sys/kernel/btf/vmlinux"))
  end)

  it("changes with the text and the flags, and only with them", function()
    local k = cache.program_key("int x;", { "-DX=1" })
    assert.matches("^%x+$", k)
    assert.equals(32, #k)
    assert.equals(k, cache.program_key("int x;", { "-DX=1" }))
    assert.not_equals(k, cache.program_key("int y;", { "-DX=1" }))
    assert.not_equals(k, cache.program_key("int x;", { "-DX=2" }))
    assert.not_equals(k, cache.program_key("int x;", { "-DX=1", "-DY" }))
  end)

  it("leaves out what only the compiler can do: debug output, shared tables, BTF-attached programs", function()
    assert.is_nil(cache.program_key("int x;", {}, 4))
    assert.is_nil(cache.program_key('BPF_TABLE("extern", u32, u64, t, 1);', {}))
    assert.is_nil(cache.program_key("BPF_TABLE_SHARED(\"hash\", u32, u64, t, 1);", {}))
    assert.is_nil(cache.program_key("KFUNC_PROBE(do_nanosleep) { return 0; }", {}))
  end)
end)
