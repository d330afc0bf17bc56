-- bcc.tracerpipe: the kernel's trace_pipe as bcc's TracerPipe, read
-- through denet's loop (denet.tracepipe): a script blocked on the next
-- line still stops on Ctrl-C, and perf buffer callbacks keep firing.
local tracepipe = require("denet.tracepipe")

local TracerPipe = class("TracerPipe")

TracerPipe.static.TRACEFS = require("denet.sys").tracefs()

--- nonblocking: readline and trace_fields return nil at once when no
--- line is waiting.
function TracerPipe:initialize(nonblocking)
  self.nonblocking = nonblocking
end

function TracerPipe:open()
  if self.pipe == nil then
    self.pipe = tracepipe.open()
  end
  return self.pipe
end

function TracerPipe:close()
  if self.pipe ~= nil then
    self.pipe:close()
    self.pipe = nil
  end
end

--- The next line (nil when nonblocking and none is waiting).
function TracerPipe:readline()
  return self:open():readline(self.nonblocking and 0 or nil)
end

--- task, pid, cpu, flags, timestamp, message of the next event line.
function TracerPipe:trace_fields()
  return self:open():fields(self.nonblocking and 0 or nil)
end

return TracerPipe
