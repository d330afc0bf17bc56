-- denet.export.prometheus: the /metrics endpoint of a run.
--
--   local P = require("denet.export.prometheus")
--   local ex = P.serve("127.0.0.1:9464", { target = "make", pid = 1234 })
--   ex:publish(fams)        -- denet.metrics families: what scrapes get now
--   ex:linger(5)            -- at the end: until scraped once more, 5 s at most
--
-- The server runs in its own thread (host/dn_http.c) and serves the last
-- published text: a scrape never waits for sampling, nor sampling for a
-- scrape.
local core = require("denet.core")
local errors = require("denet.errors")
local metrics = require("denet.metrics")

local M = {}

local Exporter = {}
Exporter.__index = Exporter

--- Serve /metrics on spec ("[ADDR:]PORT"; the address defaults to
--- 127.0.0.1: listening elsewhere must be asked for). Raises a user error
--- when it cannot listen.
function M.serve(spec, ident)
  spec = tostring(spec)
  local srv, msg = core.http_serve(spec)
  if not srv then
    errors.raise(msg)
  end
  local host = spec:match("^%[(.*)%]:%d+$") or spec:match("^(.*):%d+$") or "127.0.0.1"
  local self = setmetatable({ srv = srv, ident = ident or {}, published = 0 }, Exporter)
  self.url = string.format("http://%s:%d/metrics", host:find(":") and ("[" .. host .. "]") or host, srv:port())
  srv:set("", "# EOF\n")
  return self
end

--- Make fams what the next scrapes get.
function Exporter:publish(fams)
  self.srv:set(metrics.text(fams), metrics.openmetrics(fams))
  self.published = self.srv:scrapes()
  self.t_published = core.monotonic()
end

--- Keep serving until a scrape has seen the last published figures, for
--- at most `seconds` (the loop runs meanwhile; Ctrl-C ends it).
function Exporter:linger(seconds)
  if not seconds or seconds <= 0 then
    return
  end
  local deadline = core.monotonic() + seconds
  local denet = require("denet")
  while self.srv:scrapes() <= self.published and core.monotonic() < deadline do
    denet.sleep(math.min(0.05, math.max(0, deadline - core.monotonic())))
  end
end

function Exporter:close()
  self.srv:close()
end

--- The arguments a tracing script takes for it.
M.ARGS = {
  { name = "prometheus", metavar = "[ADDR:]PORT", help = "serve Prometheus /metrics while it runs (address "
    .. "127.0.0.1 unless given; PORT 0: any free port, printed on stderr)" },
  { name = "prometheus_linger", type = "number", metavar = "S", help = "at the end, keep serving the final "
    .. "figures until a scrape has them, S seconds at most" },
}

--- The name a target goes by: the command's (argv[1] without its folder),
--- else the process's comm.
function M.target_name(cmd, pid)
  if type(cmd) == "table" and type(cmd[1]) == "string" and cmd[1] ~= "" then
    return require("denet.util").basename(cmd[1])
  end
  if pid then
    local s = core.read_file("/proc/" .. pid .. "/comm")
    if s and s ~= "" then
      return (s:gsub("%s+$", ""))
    end
  end
  return "all"
end

return M
