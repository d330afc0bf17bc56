-- io-by-file: bytes read and written per file path by the target tree.
-- A plugin with its own BPF C on the syscall tracepoints, built on
-- denet's tracked tree (dn_wanted): openat
-- names each descriptor (every open gets its own id, so a reused
-- descriptor number is not mixed up), read/write/pread64/pwrite64 add
-- their byte counts in the kernel; user space only learns the names.
--
--   denet script io-by-file -- CMD
--   denet run --plugin io-by-file -o out.jsonl -- CMD
local core = require("denet.core")
local tree_mod = require("denet.tree")
local ffi = require("ffi")

local SRC = [[
#define PATH_LEN 256
struct opened { u32 pid, fd; u64 id; char path[PATH_LEN]; };
struct fdkey { u32 pid, fd; };
struct iokey { u64 id; u32 pid, fd; };   /* id 0: opened before tracing */
struct io { u64 read, written, reads, writes; };

BPF_HASH(fds, struct fdkey, u64, 65536);       /* (pid, fd) -> open id */
BPF_HASH(pending_open, u32, struct opened, 4096); /* tid -> openat in flight */
BPF_HASH(pending_rw, u32, u32, 65536);         /* tid -> fd of a read/write in flight */
BPF_HASH(bytes, struct iokey, struct io, 65536);
BPF_ARRAY(seq, u64, 1);
BPF_RINGBUF_OUTPUT(opens, 64);

/* a thread of the target tree (tree.c) */
static __always_inline int watched(void)
{
	u64 id = bpf_get_current_pid_tgid();
	return dn_maybe_watched((u32)id) && dn_wanted(id >> 32, (u32)id);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
	if (!watched())
		return 0;
	u32 tid = bpf_get_current_pid_tgid();
	struct opened o = {};
	bpf_probe_read_user_str(o.path, sizeof(o.path), args->filename);
	pending_open.update(&tid, &o);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;
	struct opened *o = pending_open.lookup(&tid);
	if (!o)
		return 0;
	if (args->ret >= 0) {
		int zero = 0;
		u64 *s = seq.lookup(&zero);
		if (s) {
			u64 n = __sync_fetch_and_add(s, 1) + 1;
			struct fdkey k = { .pid = id >> 32, .fd = args->ret };
			fds.update(&k, &n);
			o->pid = k.pid;
			o->fd = k.fd;
			o->id = n;
			opens.ringbuf_output(o, sizeof(*o), 0);
		}
	}
	pending_open.delete(&tid);
	return 0;
}

static __always_inline int rw_enter(u32 fd)
{
	if (!watched())
		return 0;
	u32 tid = bpf_get_current_pid_tgid();
	pending_rw.update(&tid, &fd);
	return 0;
}

static __always_inline int rw_exit(long ret, int is_write)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id;
	u32 *fd = pending_rw.lookup(&tid);
	if (!fd)
		return 0;
	struct fdkey fk = { .pid = id >> 32, .fd = *fd };
	pending_rw.delete(&tid);
	if (ret <= 0)
		return 0;
	struct iokey k = {};
	u64 *open_id = fds.lookup(&fk);
	k.id = open_id ? *open_id : 0;
	k.pid = fk.pid;
	k.fd = fk.fd;
	struct io zero = {};
	struct io *v = bytes.lookup_or_try_init(&k, &zero);
	if (!v)
		return 0;
	if (is_write) {
		__sync_fetch_and_add(&v->written, ret);
		__sync_fetch_and_add(&v->writes, 1);
	} else {
		__sync_fetch_and_add(&v->read, ret);
		__sync_fetch_and_add(&v->reads, 1);
	}
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_read) { return rw_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return rw_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_pread64) { return rw_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_exit_pread64) { return rw_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return rw_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return rw_exit(args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_pwrite64) { return rw_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_exit_pwrite64) { return rw_exit(args->ret, 1); }
]]

local P = {
  description = "Bytes read and written per file path by the target tree",
  category = "io",
  example = "denet script io-by-file --top 20 -- make",
  args = {
    { name = "top", type = "positive", default = 15, metavar = "N", help = "files shown, most bytes first" },
  },
}

local opts, b, tree
local names = {} -- open id -> path
local out = io.stdout

function P.on_init(args)
  opts = args
end

function P.on_start(target)
  tree = tree_mod.for_plugin(target, { name = "io-by-file", text = { { name = "io-by-file", text = SRC } } })
  b = tree.bpf
  b:get_table("opens"):open_ring_buffer(function(o)
    names[tonumber(o.id)] = ffi.string(o.path)
  end)
end

-- bytes per path: { path, read, written, reads, writes }, most first
local function files()
  b:ring_buffer_consume()
  local by, list = {}, {}
  for k, v in b:get_table("bytes"):items() do
    local id = tonumber(k.id)
    local path = names[id]
    if not path then
      -- opened before tracing began (stdin, stdout, inherited files)
      path = core.readlink(string.format("/proc/%d/fd/%d", k.pid, k.fd))
        or string.format("fd %d of pid %d (opened earlier)", k.fd, k.pid)
    end
    local f = by[path]
    if not f then
      f = { path = path, read = 0, written = 0, reads = 0, writes = 0 }
      by[path] = f
      list[#list + 1] = f
    end
    f.read, f.written = f.read + tonumber(v.read), f.written + tonumber(v.written)
    f.reads, f.writes = f.reads + tonumber(v.reads), f.writes + tonumber(v.writes)
  end
  table.sort(list, function(x, y)
    return x.read + x.written > y.read + y.written
  end)
  return list
end

function P.on_end()
  if not b then
    return nil
  end
  local list = files()
  out:write(string.format("%14s %14s %8s %8s  %s\n", "READ BYTES", "WRITTEN BYTES", "READS", "WRITES", "FILE"))
  local shown = {}
  for i, f in ipairs(list) do
    if i > opts.top then
      break
    end
    out:write(string.format("%14d %14d %8d %8d  %s\n", f.read, f.written, f.reads, f.writes, f.path))
    shown[#shown + 1] = f
  end
  out:flush()
  tree:close()
  return { files = shown }
end

return P
