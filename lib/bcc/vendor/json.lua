-- bcc.vendor.json: json.parse(text) and json.stringify(value).
local cjson = require("cjson")

return {
  parse = cjson.decode,
  stringify = cjson.encode,
  encode = cjson.encode,
  decode = cjson.decode,
}
