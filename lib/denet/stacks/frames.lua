-- denet.stacks.frames: stacks as names. Addresses (leaf first, as the
-- kernel's stack maps give them) become frames root first, as flame
-- graphs and folded stacks have them; a stack of a blocked thread is its
-- user frames, "-", then its kernel frames down to the leaf. The call
-- site of a stack is its nearest frames in the program itself (not libc,
-- the loader or the C++ runtime).
local syms = require("denet.syms")
local util = require("denet.util")

local M = {}

-- the user stack id of a kernel thread, which has none (not a miss)
M.STACK_NONE = -1000
-- the stack id of a block that began before tracing: its stacks were
-- read by denet.snapshot when tracing began
M.STACK_SNAPSHOT = -2000

-- libc and the loader are not call sites
local RUNTIME = { "^libc%.so", "^ld%-linux", "^libpthread", "^libstdc%+%+", "^libgcc_s" }

--- Is a mapped file (a path, or nil for no mapping) one of the runtime's
--- rather than the program's?
function M.is_runtime_module(module)
  if not module then
    return true
  end
  local base = util.basename(module)
  for _, p in ipairs(RUNTIME) do
    if base:find(p) then
      return true
    end
  end
  return false
end

--- The last n items of list (the frames nearest the block), or list.
function M.keep_last(list, n)
  if not n or #list <= n then
    return list
  end
  local cut = {}
  for i = #list - n + 1, #list do
    cut[#cut + 1] = list[i]
  end
  return cut
end

--- Names of user addresses of process pid (leaf first, as given), each
--- as denet.syms formats it: opts.module ("name [module]"), opts.offset.
function M.user_names(pid, addrs, opts)
  local out = {}
  for i, a in ipairs(addrs) do
    out[i] = syms.usym(pid, a, opts)
  end
  return out
end

--- User frames of process pid, root first, and for each whether it is in
--- the program itself (not the runtime), for naming call sites, and its
--- source line ("file.c:LINE", or "" when unknown). Where the file has
--- DWARF, a function inlined at an address is a frame of its own (as
--- `perf report --inline` and `eu-stack -i` show it). addrs: leaf first;
--- leaf: the frames the walk lost below the first (spliced in after it);
--- depth: keep that many frames nearest the block.
function M.user(pid, addrs, depth, leaf)
  if leaf and leaf[1] and #addrs > 0 then
    local all = { addrs[1] }
    for _, a in ipairs(leaf) do
      all[#all + 1] = a
    end
    for i = 2, #addrs do
      all[#all + 1] = addrs[i]
    end
    addrs = all
  end
  local out, mods, lines = {}, {}, {}
  for i = #addrs, 1, -1 do -- root first
    local name = syms.usym(pid, addrs[i])
    local _, _, module = syms.resolve(pid, addrs[i])
    local mine = not M.is_runtime_module(module)
    local info = syms.srcinfo(pid, addrs[i], i > 1)
    local n = info and #info or 0
    -- the function the address is in (named by the symbol table), then
    -- what was inlined into it, innermost last
    for j = math.max(n, 1), 1, -1 do
      local f = info and info[j]
      out[#out + 1] = (j == n and not (f and f.inlined) or not f or not f.name) and name or syms.demangle(f.name)
      mods[#out] = mine
      lines[#out] = f and f.file and (util.basename(f.file) .. ":" .. f.line) or ""
    end
  end
  return M.keep_last(out, depth), M.keep_last(mods, depth), M.keep_last(lines, depth)
end

local build_ids = {}

--- The files user addresses of process pid are in, into `into`
--- (basename -> { path, build_id }), so that a frame shown as
--- module+0xOFFSET can be symbolized later, elsewhere. Returns into.
function M.modules_of(pid, addrs, into)
  into = into or {}
  for _, a in ipairs(addrs or {}) do
    local _, _, module = syms.resolve(pid, a)
    local base = module and util.basename(module)
    if base and not into[base] then
      local bid = build_ids[module]
      if bid == nil then
        bid = module:sub(1, 1) == "/" and require("denet.core").uw_build_id(module) or ""
        build_ids[module] = bid or ""
      end
      into[base] = { path = module, build_id = bid ~= "" and bid or nil }
    end
  end
  return into
end

--- Kernel frames of addrs (leaf first), root first, without the tracing
--- machinery's frames at the leaf.
function M.kernel(addrs, depth)
  local names, out = syms.kernel_frames(addrs), {}
  for i = #names, 1, -1 do
    out[#out + 1] = names[i]
  end
  return M.keep_last(out, depth)
end

--- The kernel frames a snapshot read of a thread (denet.snapshot), root
--- first: from its addresses, or from /proc's names.
function M.kernel_of_snapshot(t, depth)
  if t.kaddrs then
    return M.kernel(t.kaddrs, depth)
  end
  local out = {}
  for i = #(t.knames or {}), 1, -1 do
    out[#out + 1] = t.knames[i]
  end
  return M.keep_last(out, depth)
end

--- One stack: user frames root first, "-", kernel frames to the leaf.
function M.join(uf, kf)
  local frames = {}
  for _, f in ipairs(uf) do
    frames[#frames + 1] = f
  end
  if #uf > 0 and #kf > 0 then
    frames[#frames + 1] = "-"
  end
  for _, f in ipairs(kf) do
    frames[#frames + 1] = f
  end
  return frames
end

--- The call site of a stack ({ user = frames, user_mods = in the
--- program }): the nearest frames of the program itself above the
--- blocking call ("queue_pop() <- worker_loop()"), or nil.
function M.site(stack)
  if stack.site then
    -- (one of Python frames: denet.stacks.python.site)
    return stack.site
  end
  local out = {}
  local mods = stack.user_mods or {}
  for i = #stack.user, 1, -1 do
    local f = stack.user[i]
    if mods[i] and not f:match("^%[") and not f:match("%+0x") then
      out[#out + 1] = f .. "()"
      if #out == 2 then
        break
      end
    end
  end
  return #out > 0 and table.concat(out, " <- ") or nil
end

return M
