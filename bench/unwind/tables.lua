-- denet script bench/unwind/tables.lua FILE...: for each file, the time to
-- build its unwind table from .eh_frame (core.uw_table), the kernel
-- memory its pages take, and the time to load them (the unwinder's load,
-- batched map updates); then the total. Run with an empty DENET_CACHE_DIR.
local core = require("denet.core")
local ffi = require("ffi")
local prog = require("denet.compose").build{ features = { offcpu = {} }, autoattach = false }
local uw = prog.bpf.unwinder
local total = 0
print("| file | rows | built | kernel memory | loaded |")
print("|---|---|---|---|---|")
for _, p in ipairs(arg) do
  local t0 = core.monotonic()
  local rows = assert(core.uw_table(p))
  local t1 = core.monotonic()
  local t = { rows = ffi.cast("const struct dn_uw_row *", rows), n = #rows / ffi.sizeof("struct dn_uw_row"),
    hold = rows }
  local b0 = uw.bytes
  uw:load(core.uw_file_key(p), t)
  local t2 = core.monotonic()
  total = total + (t2 - t0)
  print(string.format("| %s | %d | %.1f ms | %.2f MiB | %.1f ms |", p, t.n, (t1 - t0) * 1000,
    (uw.bytes - b0) / 2 ^ 20, (t2 - t1) * 1000))
end
print(string.format("\nAll of them, built and loaded: %.0f ms.", total * 1000))
prog.bpf:close()
