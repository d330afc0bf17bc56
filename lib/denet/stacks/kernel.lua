-- denet.stacks.kernel: kernel stack reuse (bpf-src/offcpu.c,
-- DN_KSTACK_REUSE). Walking a kernel stack is most of the cost of a
-- switch-out, and a thread usually blocks where it blocked before; the
-- program sends a walked stack with copies of the stack memory it was
-- found in (struct dn_kt_rec), and this module learns a template from it:
-- where on the stack each address of the walk was, so the program can
-- reuse the stack id when those words are the same again.
local bit = require("bit")
local records = require("denet.records")

local M = {}

M.SLOTS = records.const.DN_KT_SLOTS
local INNER_WORDS, OUTER_WORDS = records.const.DN_KT_INNER / 8, records.const.DN_KT_OUTER / 8

-- the word j of the copy from sp, from where the search is: the next one
-- above `at` that holds want, below the top part; nil when none
local function find_inner(rec, sp, outer0, at, want)
  local j = tonumber(at - sp) / 8
  while j < INNER_WORDS and sp + j * 8 < outer0 do
    if rec.inner[j] == want then
      return j
    end
    j = j + 1
  end
end

local function find_outer(rec, outer0, at, want)
  local j = at > outer0 and tonumber(at - outer0) / 8 or 0
  while j < OUTER_WORDS do
    if rec.outer[j] == want then
      return j
    end
    j = j + 1
  end
end

--- The template of a walked kernel stack: where each address of the
--- stack (ips, leaf first as the stack map gives them) was found in rec's
--- copies of the stack (a struct dn_kt_rec), each above the one before.
--- Slots in the top part (the syscall entry's frames) are words from top
--- - DN_KT_OUTER, the others words from the tracepoint's sp. The first
--- `skip` addresses are not looked for: the frames of the machinery that
--- ran the program, below the anchor, the same at every run. nil when a
--- frame is not in the copies or there are too many.
function M.template(rec, ips, skip)
  skip = skip or 0
  local n = #ips - skip
  if rec.ok == 0 or n < 1 or n > M.SLOTS then
    return nil
  end
  local sp, outer0 = rec.sp, rec.top - OUTER_WORDS * 8
  local t = { kstack = rec.kstack, n = n, outer = 0, span = 0, word = {}, val = {} }
  local at = sp -- search from here up
  for i = 1, n do
    local want = ips[i + skip]
    local found = find_inner(rec, sp, outer0, at, want)
    if found then
      at = sp + found * 8 + 8
      t.span = found + 1
    else
      found = find_outer(rec, outer0, at, want)
      if not found then
        return nil
      end
      t.outer = bit.bor(t.outer, bit.lshift(1, i - 1))
      at = outer0 + found * 8 + 8
    end
    t.word[i - 1], t.val[i - 1] = found, want
  end
  return t
end

--- Learn templates from the walks the program reports (from the loop);
--- raw: sched_switch runs as a raw tracepoint (-DDN_SWITCH_RAW). Returns
--- the ring buffer.
function M.learner(bpf, raw)
  local stacks = bpf:get_table("dn_offcpu_stacks")
  local kt = bpf:get_table("dn_kt")
  return bpf:get_table("dn_kt_learn"):open_ring_buffer(function(rec)
    local ips = stacks:stack_walk(rec.kstack)
    -- a raw tracepoint's walk begins below its anchor: the program is
    -- called from bpf_trace_runN, whose frame holds the argument array,
    -- so at least the return address into it is below (a stale copy of
    -- it above must not become a slot). The fewest such frames from one
    -- that leave a template (no symbol names needed: reading them would
    -- hold up the learning at the start)
    local t
    for skip = raw and 1 or 0, raw and 3 or 0 do
      t = M.template(rec, ips, skip)
      if t then
        break
      end
    end
    if not t then
      return
    end
    local v = kt.leaf.ct()
    v.kstack, v.n, v.confirmed, v.outer, v.span = t.kstack, t.n, 0, t.outer, t.span
    for i = 0, t.n - 1 do
      v.word[i], v.val[i] = t.word[i], t.val[i]
    end
    local k = rec.key
    kt:set({ syscall = k.syscall, state = k.state, way = k.way, uip = k.uip }, v)
  end, { type = records.cname("dn_kt_rec") })
end

--- Counters of kernel stack reuse: reused, walked, wrong (reuses a walk
--- disagreed with; counted in verify mode only), unconfirmed.
function M.stats(bpf)
  local t = bpf:get_table("dn_kt_stats")
  return { reused = tonumber(t:sum(0)), walked = tonumber(t:sum(1)), wrong = tonumber(t:sum(2)),
    unconfirmed = tonumber(t:sum(3)) }
end

return M
