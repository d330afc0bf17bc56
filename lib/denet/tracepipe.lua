-- denet.tracepipe: lines of the kernel's trace_pipe (bpf_trace_printk),
-- read through the event loop, so a script waiting for the next line
-- still runs its buffer callbacks and timers, and stops on Ctrl-C.
--
--   local tp = require("denet.tracepipe").open()
--   local task, pid, cpu, flags, ts, msg = tp:fields()
--
-- trace_pipe is one stream for the whole machine: every reader takes
-- lines away from the others. Reading consumes them.
local core = require("denet.core")
local errors = require("denet.errors")
local sys = require("denet.sys")

local M = {}

local TP = {}
TP.__index = TP

--- Open trace_pipe (tracefs is mounted first if need be).
function M.open()
  sys.require_tracefs()
  local path = sys.tracefs() .. "/trace_pipe"
  local fd, msg = core.open_nonblock(path)
  if not fd then
    errors.raise(msg)
  end
  return setmetatable({ fd = fd, path = path, buf = "" }, TP)
end

local shared
--- The one reader every BPF object shares (opened on first use).
function M.shared()
  if not shared or not shared.fd then
    shared = M.open()
  end
  return shared
end

function TP:close()
  if self.fd then
    core.close_fd(self.fd)
    self.fd = nil
  end
end

-- Move what can be read now into the buffer; false at end of file.
function TP:_fill()
  while true do
    local chunk, msg = core.read_nonblock(self.fd)
    if chunk == nil then
      if msg then
        errors.raise(string.format("cannot read %s: %s", self.path, msg))
      end
      return false
    end
    if chunk == "" then
      return true
    end
    self.buf = self.buf .. chunk
  end
end

--- The next line (without its newline), waiting for it; nil when timeout
--- seconds pass first. SIGINT/SIGTERM raise the interrupt error.
function TP:readline(timeout)
  if not self.fd then
    error("trace_pipe reader is closed", 2)
  end
  local deadline = timeout and (core.monotonic() + timeout)
  local w
  while true do
    local nl = self.buf:find("\n", 1, true)
    if nl then
      if w then
        w:close()
      end
      local line = self.buf:sub(1, nl - 1)
      self.buf = self.buf:sub(nl + 1)
      return line
    end
    if not self:_fill() then
      if w then
        w:close()
      end
      return nil
    end
    if not self.buf:find("\n", 1, true) then
      w = w or require("denet").watch_fd(self.fd, function() end)
      local left = -1
      if deadline then
        left = deadline - core.monotonic()
        if left <= 0 then
          w:close()
          return nil
        end
      end
      -- the watch must not outlive the wait: unread data would wake
      -- every later poll
      local ok, _, sig = pcall(require("denet")._poll, left, "trace_pipe read")
      if not ok then
        w:close()
        error(_, 0)
      end
      if sig ~= 0 and not core.signals_deferred() then
        w:close()
        core.raise_interrupt(sig)
      end
    end
  end
end

--- Split a trace_pipe line: task, pid, cpu, flags, timestamp (seconds),
--- message; nil for lines that are no event (the "CPU:n [LOST ...]"
--- notes). Kernels print 4 or 5 flag characters, and some a "(tgid)"
--- column: both are taken.
function M.parse(line)
  local task, pid, rest = line:match("^%s*(.-)%-(%d+)%s+(.*)$")
  if not task then
    return nil
  end
  rest = rest:gsub("^%(%s*[%d-]+%)%s+", "")
  local cpu, flags, ts, msg = rest:match("^%[(%d+)%]%s+(%S+)%s+([%d%.]+):%s+[^:]*:%s?(.*)$")
  if not cpu then
    -- no flags column (older kernels with irq-info off)
    cpu, ts, msg = rest:match("^%[(%d+)%]%s+([%d%.]+):%s+[^:]*:%s?(.*)$")
    flags = ""
  end
  if not cpu then
    return nil
  end
  return task, tonumber(pid), tonumber(cpu), flags, tonumber(ts), msg
end

--- The next event line's fields (see parse), waiting for it; nil when
--- timeout seconds pass first.
function TP:fields(timeout)
  local deadline = timeout and (core.monotonic() + timeout)
  while true do
    local left = deadline and math.max(0, deadline - core.monotonic())
    local line = self:readline(left)
    if not line then
      return nil
    end
    local task, pid, cpu, flags, ts, msg = M.parse(line)
    if task then
      return task, pid, cpu, flags, ts, msg
    end
  end
end

return M
