-- bcc.vendor.posix: time, sleep and CPU count for bcc scripts. sleep runs
-- denet's loop (buffer callbacks keep firing) and a SIGINT/SIGTERM during
-- it raises the interrupt error.
local ffi = require("ffi")
local sys = require("denet.sys")

-- one declaration at a time: a script may have declared some already
for _, decl in ipairs({
  "struct bcc_posix_timespec { long tv_sec; long tv_nsec; };",
  "int clock_gettime(int clk_id, struct bcc_posix_timespec *tp);",
  "int get_nprocs(void);",
  "unsigned long long strtoull(const char *nptr, char **endptr, int base);",
}) do
  pcall(ffi.cdef, decl)
end

local CLOCK = {
  REALTIME = 0,
  MONOTONIC = 1,
  PROCESS_CPUTIME_ID = 2,
  THREAD_CPUTIME_ID = 3,
  MONOTONIC_RAW = 4,
  REALTIME_COARSE = 5,
  MONOTONIC_COARSE = 6,
}

--- Nanoseconds on clock (default CLOCK.MONOTONIC_RAW), as a number.
local function time_ns(clock)
  local ts = ffi.new("struct bcc_posix_timespec")
  if ffi.C.clock_gettime(clock or CLOCK.MONOTONIC_RAW, ffi.cast("void *", ts)) ~= 0 then
    error("clock_gettime failed: " .. sys.strerror(ffi.errno()), 2)
  end
  return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end

local function sleep(seconds)
  require("denet").sleep(seconds)
end

local function cpu_count()
  return tonumber(ffi.C.get_nprocs())
end

--- A decimal (or base) string as a uint64 cdata.
local function tonumber64(s, base)
  assert(type(s) == "string", "tonumber64: a string is needed")
  return ffi.C.strtoull(s, nil, base or 10)
end

return { time_ns = time_ns, sleep = sleep, CLOCK = CLOCK, cpu_count = cpu_count, tonumber64 = tonumber64 }
