-- bcc: bcc's Lua binding, on denet. require("bcc") (or "bcc.init")
-- gives { BPF = ..., USDT = ..., sym = ... } and the helpers bcc scripts
-- expect (bcc.vendor.helpers). See docs/lua-api.md, "Coming from bcc".
require("bcc.vendor.helpers")

return {
  BPF = require("bcc.bpf"),
  USDT = require("bcc.usdt"),
  sym = require("bcc.sym"),
}
