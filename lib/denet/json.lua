-- denet.json: every record's encoding, in one place (host/dn_json.c).
--
--   local json = require("denet.json")
--   json.encode({ kind = "tree", children = json.array() })  -- "children":[]
--
-- Integers are written exactly (byte and nanosecond counters pass 2^53),
-- other numbers with 14 significant digits, a sequence as an array, an
-- empty table as an object unless made with json.array(). Decoding is
-- lua-cjson's.
local core = require("denet.core")
local cjson = require("cjson")

local M = {}

M.null = cjson.null
M.encode = core.json_encode
M.decode = cjson.decode

local ARRAY = { __jsontype = "array" }

--- t (or a new table) marked as a JSON array, so it is [] when empty.
function M.array(t)
  return setmetatable(t or {}, ARRAY)
end

--- Decode one line; nil and why when it is not JSON.
function M.try_decode(line)
  local ok, v = pcall(cjson.decode, line)
  if ok then
    return v
  end
  return nil, v
end

return M
