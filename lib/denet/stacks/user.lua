-- denet.stacks.user: user stack reuse (bpf-src/offcpu.c,
-- DN_USTACK_REUSE). The kernel's frame-pointer walk of a user stack is a
-- function of the registers saved at kernel entry and of the words it
-- reads; the program sends what a walk read (struct dn_ut_rec), and this
-- module keeps it as a template once it agrees with the stack the kernel
-- stored, so the program can reuse the stack id while those words stay.
local records = require("denet.records")

local M = {}

local FRAMES = records.const.DN_UT_FRAMES

--- Is what a walk read (rec, a struct dn_ut_rec) the stack the kernel
--- stored (ips, leaf first)? The IP, then each frame's return address,
--- and no more.
function M.consistent(rec, ips)
  local t = rec.t
  local n = t.n
  if n > FRAMES or #ips ~= n + 1 or ips[1] ~= rec.key.ip then
    return false
  end
  for i = 0, n - 1 do
    if ips[i + 2] ~= t.ret[i] then
      return false
    end
  end
  return true
end

--- Make templates from the walks the program reports (from the loop);
--- returns the ring buffer.
function M.learner(bpf)
  local stacks = bpf:get_table("dn_offcpu_stacks")
  local ut = bpf:get_table("dn_ut")
  return bpf:get_table("dn_ut_learn"):open_ring_buffer(function(rec)
    if not M.consistent(rec, stacks:stack_walk(rec.t.ustack)) then
      return
    end
    -- the template is what the walk read (the frames the walk lost, and
    -- where they were read, included when final)
    local v = ut.leaf.ct()
    require("ffi").copy(v, rec.t, require("ffi").sizeof(v))
    local k = rec.key
    ut:set({ tgid = k.tgid, ip = k.ip, sp = k.sp, bp = k.bp }, v)
  end, { type = records.cname("dn_ut_rec") })
end

--- Counters of user stack reuse: reused, walked, wrong (reuses a walk
--- disagreed with; counted in verify mode only).
function M.stats(bpf)
  local t = bpf:get_table("dn_ut_stats")
  return { reused = tonumber(t:sum(0)), walked = tonumber(t:sum(1)), wrong = tonumber(t:sum(2)) }
end

return M
