-- denet.stacks.unwind: the callers a frame-pointer walk loses, found from
-- the call frame information (.eh_frame) of the files that hold them.
--
-- glibc and most of Debian are built without frame pointers: a walk that
-- follows rbp goes from a libc function's IP straight to the nearest
-- caller that keeps one. The rules that find the callers come from
-- denet.syms.frame_rule (elfutils' libdw over the file's CFI):
--   * learner(bpf): answers the program's requests for rules (dn_leaf_ask,
--     bpf-src/offcpu.c DN_LEAF_UNWIND), which it applies in the kernel;
--   * walk(pid, ip, sp, bp): a whole user stack from saved registers,
--     read through /proc/PID/mem without stopping the thread (a snapshot
--     of a blocked thread).
local ffi = require("ffi")
local records = require("denet.records")
local syms = require("denet.syms")

local M = {}

M.LEAF_FRAMES = records.const.DN_LEAF_FRAMES
local MAX_FRAMES = 127

--- A reader of process pid's memory, through /proc/PID/mem (no ptrace
--- stop): read(addr) -> the word there or nil, and close(); nil when the
--- process cannot be read.
function M.memory(pid)
  local f = io.open("/proc/" .. pid .. "/mem", "rb")
  if not f then
    return nil
  end
  return function(addr)
    if not addr or addr <= 0 or addr >= 2 ^ 47 then
      return nil
    end
    if not f:seek("set", addr) then
      return nil
    end
    local b = f:read(8)
    if not b or #b ~= 8 then
      return nil
    end
    return tonumber(ffi.cast("const uint64_t *", b)[0])
  end, function()
    f:close()
  end
end

--- Answer the program's requests for unwind rules (from the loop): each
--- IP of a traced process it met without a rule gets the rule its file's
--- call frame information gives, or "stop". While the thread that asked
--- is still blocked, its stack is read on from there, and the frames
--- above get their rules too, so the next block at that place is whole.
--- Returns the ring buffer.
function M.learner(bpf)
  local rules = bpf:get_table("dn_leaf_rules")
  local function learn(tgid, ip, is_return)
    local kind, cfa, ra = syms.frame_rule(tgid, ip, is_return == 1)
    local v = rules.leaf.ct()
    if kind == "unwind" then
      v.cfa, v.ra, v.unwind = cfa, ra, 1
    end
    rules:set({ tgid = tgid, is_return = is_return, ip = ip }, v)
    return kind, cfa, ra
  end
  return bpf:get_table("dn_leaf_ask"):open_ring_buffer(function(rec)
    local k = rec.key
    local tgid, is_return, ip, sp = k.tgid, k.is_return, tonumber(k.ip), tonumber(rec.sp)
    local read, close = M.memory(rec.tid)
    for level = is_return, M.LEAF_FRAMES - 1 do
      local kind, cfa, ra = learn(tgid, ip, level > 0 and 1 or 0)
      local next_ip = kind == "unwind" and read and read(sp + cfa + ra)
      if not next_ip or next_ip == 0 then
        break
      end
      local known = rules:get({ tgid = tgid, is_return = 1, ip = next_ip })
      if known and known.pending == 0 then
        break
      end
      ip, sp = next_ip, sp + cfa
    end
    if close then
      close()
    end
  end, { type = records.cname("dn_leaf_ask") })
end

--- Counters of the unwinding in the kernel: before_rules, the blocks
--- whose lost frames were cut short because their rules had not been
--- learnt yet (the first blocks at a place).
function M.stats(bpf)
  return { before_rules = tonumber(bpf:get_table("dn_leaf_stats"):sum(0)) }
end

-- The callers of the function at ip that has no frame pointer, from its
-- CFA rules (as bpf-src/offcpu.c's dn_leaf_unwind does): at most
-- LEAF_FRAMES return addresses.
local function leaf_frames(pid, read, ip, sp)
  local leaf, at, s = {}, ip, sp
  for level = 0, M.LEAF_FRAMES - 1 do
    local kind, cfa, ra = syms.frame_rule(pid, at, level > 0)
    if kind ~= "unwind" or not s then
      break
    end
    local ret = read(s + cfa + ra)
    if not ret or ret == 0 then
      break
    end
    leaf[#leaf + 1] = ret
    at, s = ret, s + cfa
  end
  return leaf
end

--- The user stack of a thread of process pid from its saved registers:
--- addrs (the IP, then the return addresses of the frame pointer chain,
--- leaf first, as the kernel's stack walk gives them) and leaf (the
--- frames that walk loses in functions without frame pointers, which go
--- after the first address). bp nil: only the leaf frames.
function M.walk(pid, ip, sp, bp)
  local read, close = M.memory(pid)
  if not read or not ip or ip == 0 then
    if close then
      close()
    end
    return {}, {}
  end
  local addrs, leaf = { ip }, leaf_frames(pid, read, ip, sp)
  while bp and bp ~= 0 and #addrs < MAX_FRAMES do
    local ret, next_bp = read(bp + 8), read(bp)
    if not ret or ret == 0 then
      break
    end
    addrs[#addrs + 1] = ret
    if not next_bp or next_bp <= bp then
      break
    end
    bp = next_bp
  end
  close()
  return addrs, leaf
end

return M
