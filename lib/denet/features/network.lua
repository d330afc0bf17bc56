-- Network bytes per process (bpf-src/net.c): what the tree sent and
-- received over TCP/UDP sockets, from the socket layer's tracepoints
-- (6.3+) or the socket syscalls' return values (before), unlike the
-- records' sys_net_* fields, which are the whole namespace's interfaces
-- (/proc/net/dev). The monitor's aggregated.ebpf.network, under the
-- original's names: rx_bytes, tx_bytes (the tree's, exited processes
-- included) and per_pid.
local State = {}
State.__index = State

local function start(ctx)
  return setmetatable({ map = ctx.bpf:get_table("dn_net"), dropped = ctx.bpf:get_table("dn_net_dropped"),
    syscalls_only = ctx.program and ctx.program:has_flag("-DDN_NET_SYSCALLS") }, State)
end

--- The tree's bytes so far: { rx_bytes, tx_bytes, per_pid = { ["pid"] =
--- { rx_bytes, tx_bytes } }, source ("socket" or "syscalls"), dropped
--- (sends and receives not counted: the map was full) }.
function State:figures()
  local rx, tx, per = 0, 0, {}
  for k, v in self.map:items_sum() do
    local r, t = tonumber(v.rx), tonumber(v.tx)
    rx, tx = rx + r, tx + t
    per[tostring(tonumber(k))] = { rx_bytes = r, tx_bytes = t }
  end
  local out = { rx_bytes = rx, tx_bytes = tx, per_pid = per,
    source = self.syscalls_only and "syscalls" or "socket" }
  local d = tonumber(self.dropped:sum(0)) or 0
  if d > 0 then
    out.dropped = d
  end
  return out
end

return {
  name = "network",
  description = "bytes sent and received over TCP/UDP sockets, per process of the tree",
  bpf = {
    file = "net.c",
    order = 35,
    needs = { "tree" },
    variants = {
      { requires = { "sock_length" }, otherwise = { cflags = { "-DDN_NET_SYSCALLS" },
        note = "network bytes from the socket syscalls' return values (sendto, sendmsg, recvfrom, recvmsg)" } },
    },
  },
  start = start,
  figures = function(s)
    return s:figures()
  end,
  report = function(s)
    return s:figures()
  end,
  monitor = { flag = "network", help = "also network bytes per process from BPF (aggregated.ebpf.network)" },
}
