-- denet.stacks.user: user stack reuse (bpf-src/offcpu.c,
-- DN_USTACK_REUSE). The kernel's frame-pointer walk of a user stack is a
-- function of the registers saved at kernel entry and of the words it
-- reads; the program sends what a walk read (struct dn_ut_rec), and this
-- module keeps it as a template once it agrees with the stack the kernel
-- stored, so the program can reuse the stack id while those words stay.
local ffi = require("ffi")
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

--- Does template a (a struct dn_ut) hold the same stack and words as b?
function M.same(a, b)
  if a.ustack ~= b.ustack or a.n ~= b.n or a["end"] ~= b["end"] then
    return false
  end
  for i = 0, math.min(a.n, FRAMES) - 1 do
    if a.fp[i] ~= b.fp[i] or a.next[i] ~= b.next[i] or a.ret[i] ~= b.ret[i] then
      return false
    end
  end
  return true
end

--- Make templates from the walks the program reports (from the loop).
--- Returns the ring buffer and the learner's counts: late, the walks of
--- a place whose template the learner had already made from the same
--- words (they were walked before it reached the kernel).
function M.learner(bpf)
  local stacks = bpf:get_table("dn_offcpu_stacks")
  local ut = bpf:get_table("dn_ut")
  local counts = { late = 0 }
  local buf = bpf:get_table("dn_ut_learn"):open_ring_buffer(function(rec)
    if not M.consistent(rec, stacks:stack_walk(rec.t.ustack)) then
      return
    end
    local k = rec.key
    local key = { tgid = k.tgid, ip = k.ip, sp = k.sp, bp = k.bp }
    local have = ut:get(key)
    if have and M.same(have, rec.t) then
      -- kept as it is: the kernel may have added the lost frames to it
      counts.late = counts.late + 1
      return
    end
    -- the template is what the walk read (the frames the walk lost, and
    -- where they were read, included when final)
    local v = ut.leaf.ct()
    ffi.copy(v, rec.t, ffi.sizeof(v))
    ut:set(key, v)
  end, { type = records.cname("dn_ut_rec") })
  return buf, counts
end

--- Counters of user stack reuse: reused, walked, wrong (reuses a walk
--- disagreed with; counted in verify mode only) and late (walks before
--- their template reached the kernel; counts, the learner's).
function M.stats(bpf, counts)
  local t = bpf:get_table("dn_ut_stats")
  return { reused = tonumber(t:sum(0)), walked = tonumber(t:sum(1)), wrong = tonumber(t:sum(2)),
    late = counts and counts.late or 0 }
end

return M
