-- denet.offcpu.classify: why a thread blocked. A block is classified from
-- its task state, the syscall it was in and its kernel frames into one
-- category: runqueue, paging, sleep, lock, poll, io, ipc, net or other
-- (the rules are a table in docs/offcpu.md). Pure functions, unit-tested
-- (tests/unit/offcpu_spec.lua).
local bit = require("bit")

local M = {}

-- Task state letters for --state, as ps shows them; R is "preempted while
-- runnable" (the run queue).
local STATE_BITS = { R = 1, S = 2, D = 4, T = 8, t = 16 } -- 1, then state bit << 1

--- The state mask of letters like "D" or "SD" (bit 0: preempted while
--- runnable, bit N+1: task state bit N), as the tracer's config takes it;
--- nil and a message for a letter that is not a state.
function M.state_mask(letters)
  local mask = 0
  for c in letters:gmatch(".") do
    local b = STATE_BITS[c]
    if not b then
      return nil, string.format("unknown task state '%s' (use R, S, D, T or t)", c)
    end
    mask = bit.bor(mask, b)
  end
  return mask
end

--- Is a block in task state `state` (a sched_switch state: 0 preempted)
--- kept by state mask `mask` (nil: every state)?
function M.state_kept(mask, state)
  local bitpos = state ~= 0 and bit.lshift(state, 1) or 1
  return not mask or bit.band(mask, bitpos) ~= 0
end

local SLEEP = { nanosleep = true, clock_nanosleep = true }
local LOCK = { futex = true, futex_waitv = true }
local POLL = { epoll_wait = true, epoll_pwait = true, epoll_pwait2 = true, poll = true, ppoll = true,
  select = true, pselect6 = true }
local SYNC = { fsync = true, fdatasync = true, sync = true, syncfs = true, sync_file_range = true, msync = true }

local function any_frame(frames, patterns)
  for _, f in ipairs(frames) do
    for _, p in ipairs(patterns) do
      if f:find(p) then
        return true
      end
    end
  end
  return false
end

local FAULT = { "^exc_page_fault", "^do_user_addr_fault", "^handle_mm_fault", "^filemap_fault" }
local PIPE = { "pipe_read", "pipe_write", "pipe_wait" } -- anon_pipe_read on newer kernels
local UNIX = { "^unix_stream_", "^unix_dgram_", "^unix_wait" }
local NET = { "^tcp_", "^inet_", "^sk_wait", "^sock_", "^udp_", "^__skb_wait" }
local IO = { "^io_schedule", "^blk_", "^folio_wait", "^wait_on_page", "^jbd2_", "^ext4_sync", "^filemap_write" }

-- the categories a syscall alone decides, in the order they are tried
local BY_SYSCALL = { { SLEEP, "sleep" }, { LOCK, "lock" }, { POLL, "poll" }, { SYNC, "io" } }

--- The category of a block when its state or syscall alone decides it
--- (preempted, or a sleep, futex, poll or sync syscall), else nil: its
--- kernel frames decide.
function M.decided(state, syscall)
  if state == 0 then
    return "runqueue"
  end
  for _, c in ipairs(BY_SYSCALL) do
    if syscall and c[1][syscall] then
      return c[2]
    end
  end
end

--- The category of a block: state (0: preempted), syscall (its name, or
--- nil outside a syscall), kframes (kernel frame names, any order).
function M.category(state, syscall, kframes)
  if state ~= 0 and syscall == nil and any_frame(kframes, FAULT) then
    return "paging"
  end
  local cat = M.decided(state, syscall)
  if cat then
    return cat
  end
  if any_frame(kframes, PIPE) or any_frame(kframes, UNIX) then
    return "ipc"
  end
  if any_frame(kframes, NET) then
    return "net"
  end
  if any_frame(kframes, FAULT) then
    return "paging"
  end
  if bit.band(state, 2) ~= 0 or any_frame(kframes, IO) then
    return "io"
  end
  if any_frame(kframes, { "^futex_wait" }) then
    return "lock"
  end
  return "other"
end

--- What a category means, for verdicts ("waiting for a futex").
M.DESCRIBE = {
  sleep = "sleeping", lock = "waiting for a futex", io = "waiting for disk I/O", net = "waiting for the network",
  ipc = "waiting for a pipe or socket peer", poll = "waiting in poll/epoll", paging = "waiting for page faults",
  runqueue = "waiting for a CPU", other = "blocked",
}

--- "850 ms", "12.3 s", "2 h 05 min": a length of time for people.
function M.duration_text(us)
  if us < 1e6 then
    return string.format("%.0f ms", us / 1000)
  elseif us < 600e6 then
    return string.format("%.1f s", us / 1e6)
  elseif us < 7200e6 then
    return string.format("%.0f min", us / 60e6)
  end
  return string.format("%d h %02d min", math.floor(us / 3600e6), math.floor(us / 60e6) % 60)
end

return M
