local core = require("denet.core")
local monitor = require("denet.monitor")
local cjson = require("cjson")
local m = monitor.new{ pid = 4617 }
m:start()
core.release_compiler_memory()
local function cpu() local u, s = core.cputime(); return u + s end
local N = 200
local t0 = cpu()
for i = 1, N do m.ptab:sample(false, false) end
local t1 = cpu()
for i = 1, N do m.ptab:sample(true, false) end
local t2 = cpu()
for i = 1, N do m.tree:ctx_switches() end
local t3 = cpu()
local rec
for i = 1, N do rec = m:sample() end
local t4 = cpu()
for i = 1, N do cjson.encode(rec) end
local t5 = cpu()
print(string.format("ptab %.3f ms, ptab+pss %.3f ms, ctx %.3f ms, full sample %.3f ms, encode %.3f ms", (t1-t0)/N*1e3, (t2-t1)/N*1e3, (t3-t2)/N*1e3, (t4-t3)/N*1e3, (t5-t4)/N*1e3))
