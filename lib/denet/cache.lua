-- denet.cache: where denet keeps what it derives once and reuses across
-- runs: /var/cache/denet for root, $XDG_CACHE_HOME/denet or
-- ~/.cache/denet otherwise. Entries are written to a temporary file and
-- renamed into place, so readers never see half an entry and two writers
-- of the same entry are both right.
local core = require("denet.core")

local M = {}

--- The cache folder (created on first use; nil and why when it cannot be).
function M.dir()
  local d
  if core.ids().euid == 0 then
    d = "/var/cache/denet"
  else
    local xdg, home = os.getenv("XDG_CACHE_HOME"), os.getenv("HOME")
    if xdg and xdg:sub(1, 1) == "/" then
      d = xdg .. "/denet"
    elseif home and home:sub(1, 1) == "/" then
      d = home .. "/.cache/denet"
    else
      return nil, "no cache folder (HOME is not set)"
    end
  end
  if not core.stat(d) then
    os.execute(string.format("mkdir -p -m 0755 '%s' 2>/dev/null", d:gsub("'", "'\\''")))
  end
  local st = core.stat(d)
  if not st or not st.dir then
    return nil, "cannot create the cache folder " .. d
  end
  return d
end

--- The path of entry `name` (it may not exist).
function M.path(name)
  local d, err = M.dir()
  if not d then
    return nil, err
  end
  return d .. "/" .. name
end

--- Write entry `name` with `content` atomically; returns its path, or nil
--- and why.
function M.put(name, content)
  local path, err = M.path(name)
  if not path then
    return nil, err
  end
  local tmp = string.format("%s.tmp.%d", path, core.ids().pid)
  local f, ferr = io.open(tmp, "wb")
  if not f then
    return nil, ferr
  end
  local ok, werr = f:write(content)
  f:close()
  if not ok then
    os.remove(tmp)
    return nil, werr
  end
  local rok, rerr = os.rename(tmp, path)
  if not rok then
    os.remove(tmp)
    return nil, rerr
  end
  return path
end

return M
