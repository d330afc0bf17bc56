-- denet.compose and denet.features: how descriptors become a program set,
-- planned without compiling anything (the kernel's features as this one
-- has them, and with some turned off by DENET_DISABLE).
local compose = require("denet.compose")
local features = require("denet.features")
local kernel = require("denet.kernel")

local function has(list, x)
  for _, v in ipairs(list) do
    if v == x then
      return true
    end
  end
  return false
end

local function with_disabled(names, fn)
  local old = os.getenv("DENET_DISABLE")
  require("ffi").cdef("int setenv(const char *n, const char *v, int o); int unsetenv(const char *n);")
  require("ffi").C.setenv("DENET_DISABLE", names, 1)
  kernel.reset()
  local ok, err = pcall(fn)
  if old then
    require("ffi").C.setenv("DENET_DISABLE", old, 1)
  else
    require("ffi").C.unsetenv("DENET_DISABLE")
  end
  kernel.reset()
  assert(ok, err)
end

describe("the feature registry", function()
  it("lists every feature once, each descriptor naming itself", function()
    local names = {}
    for _, d in ipairs(features.list()) do
      names[#names + 1] = d.name
      assert.is_string(d.description)
    end
    assert.same(features.NAMES, names)
    assert.is_true(features.known("offcpu"))
    assert.is_false(features.known("nope"))
    assert.has_error(function()
      features.get("nope")
    end)
  end)

  it("gives the monitor its options and the features it can add", function()
    local flags = {}
    for _, a in ipairs(features.monitor_args()) do
      flags[#flags + 1] = a.name
    end
    assert.same({ "offcpu", "syscalls", "network" }, flags)
    local f = features.for_monitor({ interval = 0.1 }, { syscalls = true }, { prometheus = "0" })
    assert.same({ interval = 0.1 }, f.monitor)
    assert.same({ latency = true }, f.syscalls)
    assert.is_nil(f.offcpu)
    assert.is_nil(f.network)
  end)

  it("plans network bytes from the socket tracepoints, or the socket syscalls where the kernel lacks them", function()
    local flags = compose.plan({ "network" })
    assert.equals(not kernel.has("sock_length"), has(flags, "-DDN_NET_SYSCALLS"))
    with_disabled("sock_length", function()
      local f, notes = compose.plan({ "network" })
      assert.is_true(has(f, "-DDN_NET_SYSCALLS"))
      assert.matches("socket syscalls", table.concat(notes, "\n"))
    end)
  end)
end)

describe("composition planning", function()
  it("closes over what parts need and orders them by their place", function()
    local list, set = compose.closure({ "offcpu", "syscalls" })
    assert.same({ "tree", "syscalls", "insys", "unwind", "pyframes", "offcpu", "switch" }, list)
    assert.is_true(set.switch)
    local mon = compose.closure({ "monitor" })
    assert.same({ "tree", "monitor", "switch" }, mon)
    assert.has_error(function()
      compose.closure({ "no_such_part" })
    end)
  end)

  it("keeps asked-for options the kernel can do, and drops them with a note when it cannot", function()
    local flags, notes = compose.plan({ "offcpu" }, { "-DDN_KSTACK_REUSE", "-DDN_KSTACK_VERIFY", "-DX=1" })
    assert.is_true(has(flags, "-DDN_HOOK_OFFCPU"))
    assert.is_true(has(flags, "-DX=1"))
    assert.equals(kernel.has("task_pt_regs") and kernel.has("ringbuf"), has(flags, "-DDN_KSTACK_REUSE"))
    with_disabled("ringbuf", function()
      flags, notes = compose.plan({ "offcpu" }, { "-DDN_KSTACK_REUSE", "-DDN_KSTACK_VERIFY" })
      assert.is_false(has(flags, "-DDN_KSTACK_REUSE"))
      assert.is_false(has(flags, "-DDN_KSTACK_VERIFY")) -- dropped with it
      assert.is_true(has(flags, "-DDN_TREE_PERF"))      -- the tree's variant
      local text = table.concat(notes, "\n")
      assert.matches("DENET_DISABLE turns off the BPF ring buffer %(ringbuf%): process events come through a perf "
        .. "buffer", text)
      assert.matches("kernel stacks are walked at every switch", text)
    end)
  end)

  it("takes run-time values out of the flags: the same flags for every filter value", function()
    local offcpu = features.get("offcpu")
    local a = offcpu.plan({ min_us = 100, states = 4 })
    local b = offcpu.plan({ min_us = 5000, max_us = 9000, threads = "user" })
    assert.same(a, b)
    local cfg = offcpu.config.values({ min_us = 100, max_us = 2000, states = 4, threads = "kernel" })
    assert.same({ min_ns = 100000, max_ns = 2000000, states = 4, threads = 2 }, cfg)
    local sc = features.get("syscalls")
    assert.same(sc.plan({ failed = true }), sc.plan({ errno = 2, syscalls = { "read" } }))
    assert.same({ failed = 0, err = 2, filter = 1 }, sc.config.values({ errno = 2, syscalls = { "read" } }))
    assert.same({ mode = 1, tid = 0, self_tgid = require("denet.core").ids().pid },
      features.get("tree").config.values({ mode = "all" }))
  end)
end)
