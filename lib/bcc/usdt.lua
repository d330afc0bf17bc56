-- bcc.usdt: USDT probes as bcc's Lua binding offers them.
--
--   local u = USDT:new{ pid = 1234 }        -- or { path = "/usr/bin/x" }
--   u:enable_probe{ probe = "method__entry", fn_name = "trace_method" }
--   local b = BPF:new{ text = program, usdt = u }   -- probes attached
--
-- Built on denet.bpf's USDT contexts (libbcc's bcc_usdt_* API).
local dbpf = require("denet.bpf")
local errors = require("denet.errors")

local Usdt = class("USDT")

Usdt.static.open_contexts = {}

local function fail(e)
  if errors.is_interrupt(e) then
    error(e, 0)
  end
  local where = errors.where(2)
  error((where and (where .. ": ") or "") .. errors.text(e), 0)
end

function Usdt.static.cleanup()
  for _, u in ipairs(Usdt.static.open_contexts) do
    u:_cleanup()
  end
  Usdt.static.open_contexts = {}
end

function Usdt:initialize(args)
  local ok, u = pcall(dbpf.usdt, args)
  if not ok then
    fail(u)
  end
  self.pid, self.path, self.context = args.pid, args.path, u
  table.insert(Usdt.static.open_contexts, self)
end

--- enable_probe{ probe = "name" or "provider:name", fn_name = "fn" }
function Usdt:enable_probe(args)
  local ok, e = pcall(self.context.enable_probe, self.context, args)
  if not ok then
    fail(e)
  end
end

--- The probes of the context: { provider, name, path, semaphore,
--- locations, arguments } each.
function Usdt:probes()
  return self.context:probes()
end

function Usdt:_cleanup()
  if self.context then
    self.context:close()
    self.context = nil
  end
end

-- the argument readers of the enabled probes (C text)
function Usdt:_get_text()
  local text, msg = dbpf.usdt_args({ self.context.ctx })
  if not text then
    fail(msg)
  end
  return text
end

function Usdt:_attach_uprobes(bpf)
  for _, u in ipairs(self.context.ctx:uprobes()) do
    bpf:attach_uprobe{ name = u.path, addr = u.addr, fn_name = u.fn_name, pid = u.pid > 0 and u.pid or nil }
  end
end

return Usdt
