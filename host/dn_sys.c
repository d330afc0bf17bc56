/*
 * dn_sys.c - small system facts for Lua: clocks, identity and
 * capabilities, the terminal, and the perf-event probe `doctor` uses.
 *
 * Depends on libc, Linux capget and libbcc's bpf_open_perf_event.
 * Reading /proc and /sys text is left to Lua; these are the calls Lua
 * cannot make on its own.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <linux/capability.h>
#include <linux/perf_event.h>

#include <bcc/bcc_version.h>
#include <bcc/libbpf.h>

#include "dn.h"

static double clock_s(clockid_t id)
{
	struct timespec t;

	clock_gettime(id, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* core.monotonic() -> seconds since an arbitrary point (CLOCK_MONOTONIC) */
static int l_monotonic(lua_State *L)
{
	lua_pushnumber(L, clock_s(CLOCK_MONOTONIC));
	return 1;
}

/* core.realtime() -> seconds since the epoch */
static int l_realtime(lua_State *L)
{
	lua_pushnumber(L, clock_s(CLOCK_REALTIME));
	return 1;
}

/* core.monotonic_ns() -> CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns() */
static int l_monotonic_ns(lua_State *L)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	lua_pushnumber(L, (double)t.tv_sec * 1e9 + (double)t.tv_nsec);
	return 1;
}

/* core.boottime() -> seconds since boot (CLOCK_BOOTTIME), the clock of
 * /proc/PID/stat's starttime */
static int l_boottime(lua_State *L)
{
	lua_pushnumber(L, clock_s(CLOCK_BOOTTIME));
	return 1;
}

/* core.cputime() -> user, system seconds used by denet itself */
static int l_cputime(lua_State *L)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	lua_pushnumber(L, (lua_Number)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6);
	lua_pushnumber(L, (lua_Number)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
	lua_pushnumber(L, (lua_Number)ru.ru_maxrss);
	return 3;
}

/* core.release_compiler_memory() -> kib_paged_out
 * After the BPF programs are compiled, the compiler (LLVM and clang inside
 * libbcc) sits idle: give its heap back (malloc_trim) and page its
 * libraries out of our resident set (MADV_PAGEOUT; clean file pages, so
 * nothing is lost, and a later compile faults them back in). Only mappings
 * of libLLVM, libclang and libbcc.so (the compiler's copy of libbcc) are
 * touched. */
static int l_release_compiler_memory(lua_State *L)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[4096];
	uint64_t total = 0;

	malloc_trim(0);
	if (!f) {
		lua_pushinteger(L, 0);
		return 1;
	}
	while (fgets(line, sizeof(line), f)) {
		unsigned long long start, end;
		char *path = strchr(line, '/');

		if (!path || sscanf(line, "%llx-%llx", &start, &end) != 2)
			continue;
		/* (not libbcc_bpf: its map calls serve the whole run) */
		if (!strstr(path, "libLLVM") && !strstr(path, "libclang") && !strstr(path, "/libbcc.so"))
			continue;
		if (madvise((void *)(uintptr_t)start, (size_t)(end - start), 21 /* MADV_PAGEOUT */) == 0)
			total += end - start;
	}
	fclose(f);
	lua_pushinteger(L, (lua_Integer)(total / 1024));
	return 1;
}

/* core.rss_kb() -> resident set size now (VmRSS), in KiB */
static int l_rss_kb(lua_State *L)
{
	FILE *f = fopen("/proc/self/statm", "re");
	unsigned long size = 0, res = 0;

	if (f) {
		if (fscanf(f, "%lu %lu", &size, &res) != 2)
			res = 0;
		fclose(f);
	}
	lua_pushinteger(L, (lua_Integer)(res * (unsigned long)sysconf(_SC_PAGESIZE) / 1024));
	return 1;
}

/* core.uname() -> { sysname, nodename, release, version, machine } */
static int l_uname(lua_State *L)
{
	struct utsname u;

	if (uname(&u) != 0)
		return dn_vm_fail(L, errno, "uname: %s", strerror(errno));
	lua_createtable(L, 0, 5);
	lua_pushstring(L, u.sysname);
	lua_setfield(L, -2, "sysname");
	lua_pushstring(L, u.nodename);
	lua_setfield(L, -2, "nodename");
	lua_pushstring(L, u.release);
	lua_setfield(L, -2, "release");
	lua_pushstring(L, u.version);
	lua_setfield(L, -2, "version");
	lua_pushstring(L, u.machine);
	lua_setfield(L, -2, "machine");
	return 1;
}

/* core.ids() -> { pid, ppid, uid, euid } */
static int l_ids(lua_State *L)
{
	lua_createtable(L, 0, 4);
	lua_pushinteger(L, getpid());
	lua_setfield(L, -2, "pid");
	lua_pushinteger(L, getppid());
	lua_setfield(L, -2, "ppid");
	lua_pushinteger(L, getuid());
	lua_setfield(L, -2, "uid");
	lua_pushinteger(L, geteuid());
	lua_setfield(L, -2, "euid");
	return 1;
}

/* core.caps() -> { bpf, perfmon, sys_admin, sys_resource } effective */
static int l_caps(lua_State *L)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	uint64_t eff;

	memset(d, 0, sizeof(d));
	if (syscall(SYS_capget, &h, d) != 0)
		return dn_vm_fail(L, errno, "capget: %s", strerror(errno));
	eff = (uint64_t)d[0].effective | ((uint64_t)d[1].effective << 32);
	lua_createtable(L, 0, 4);
	lua_pushboolean(L, (eff >> 39) & 1); /* CAP_BPF */
	lua_setfield(L, -2, "bpf");
	lua_pushboolean(L, (eff >> 38) & 1); /* CAP_PERFMON */
	lua_setfield(L, -2, "perfmon");
	lua_pushboolean(L, (eff >> 21) & 1); /* CAP_SYS_ADMIN */
	lua_setfield(L, -2, "sys_admin");
	lua_pushboolean(L, (eff >> 24) & 1); /* CAP_SYS_RESOURCE */
	lua_setfield(L, -2, "sys_resource");
	return 1;
}

/* core.isatty(fd) -> bool */
static int l_isatty(lua_State *L)
{
	lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
	return 1;
}

/* core.perf_event_probe(cpu) -> true | nil, msg, errno: can a software
 * cpu-clock perf event be opened on that CPU (what sampling needs)? */
static int l_perf_event_probe(lua_State *L)
{
	int cpu = (int)luaL_optinteger(L, 1, 0);
	int fd = bpf_open_perf_event(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, -1, cpu);

	if (fd < 0)
		return dn_vm_fail(L, errno, "perf_event_open: %s", strerror(errno));
	close(fd);
	lua_pushboolean(L, 1);
	return 1;
}

/* core.perf_open(pid, type, config [, opts]) -> fd | nil, msg, errno: a
 * counting perf event (no sampling) on task pid (-1: every task of
 * opts.cpu), opened enabled. opts: inherit (follows the tasks pid
 * creates from now on), inherit_thread (threads only), cpu (default -1),
 * group (the fd of a group leader: read with it, in one read, by
 * core.perf_read_group). Read with core.perf_read, closed with
 * core.perf_close. */
static int l_perf_open(lua_State *L)
{
	struct perf_event_attr a;
	int pid = (int)luaL_checkinteger(L, 1);
	int cpu = -1, group = -1, leader = 0, fd;

	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.type = (uint32_t)luaL_checkinteger(L, 2);
	a.config = (uint64_t)luaL_checknumber(L, 3);
	a.read_format = PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING;
	a.exclude_hv = 1;
	if (lua_istable(L, 4)) {
		lua_getfield(L, 4, "inherit");
		a.inherit = lua_toboolean(L, -1) ? 1 : 0;
		lua_getfield(L, 4, "inherit_thread");
		a.inherit_thread = lua_toboolean(L, -1) ? 1 : 0;
		lua_getfield(L, 4, "cpu");
		cpu = (int)luaL_optinteger(L, -1, -1);
		lua_getfield(L, 4, "group");
		group = (int)luaL_optinteger(L, -1, -1);
		lua_getfield(L, 4, "leader");
		leader = lua_toboolean(L, -1);
		lua_pop(L, 5);
	}
	if (group >= 0 || leader)
		a.read_format |= PERF_FORMAT_GROUP;
	fd = (int)syscall(SYS_perf_event_open, &a, pid, cpu, group, PERF_FLAG_FD_CLOEXEC);
	if (fd < 0)
		return dn_vm_fail(L, errno, "perf_event_open: %s", strerror(errno));
	lua_pushinteger(L, fd);
	return 1;
}

/* core.perf_read(fd) -> count, time_enabled_ns, time_running_ns | nil,
 * msg, errno. The count is the tasks' sum (inherited ones included). */
static int l_perf_read(lua_State *L)
{
	uint64_t v[3];
	ssize_t n = read((int)luaL_checkinteger(L, 1), v, sizeof(v));

	if (n != (ssize_t)sizeof(v))
		return dn_vm_fail(L, n < 0 ? errno : EIO, "perf counter read: %s",
		                  n < 0 ? strerror(errno) : "short read");
	lua_pushnumber(L, (lua_Number)v[0]);
	lua_pushnumber(L, (lua_Number)v[1]);
	lua_pushnumber(L, (lua_Number)v[2]);
	return 3;
}

/* core.perf_read_group(leader_fd, out) -> n, time_enabled_ns,
 * time_running_ns | nil, msg, errno: the counts of a group opened with
 * opts.leader on its leader and opts.group on the others, in one read,
 * into out[1..n] (in the order they were opened; raw: scale by
 * enabled/running where the kernel multiplexed the group). */
static int l_perf_read_group(lua_State *L)
{
	uint64_t v[3 + 16];
	ssize_t n = read((int)luaL_checkinteger(L, 1), v, sizeof(v));

	luaL_checktype(L, 2, LUA_TTABLE);
	if (n < (ssize_t)(3 * sizeof(uint64_t)) || v[0] > 16 || n < (ssize_t)((3 + v[0]) * sizeof(uint64_t)))
		return dn_vm_fail(L, n < 0 ? errno : EIO, "perf group read: %s",
		                  n < 0 ? strerror(errno) : "short read");
	for (uint64_t i = 0; i < v[0]; i++) {
		lua_pushnumber(L, (lua_Number)v[3 + i]);
		lua_rawseti(L, 2, (int)i + 1);
	}
	lua_pushinteger(L, (lua_Integer)v[0]);
	lua_pushnumber(L, (lua_Number)v[1]);
	lua_pushnumber(L, (lua_Number)v[2]);
	return 3;
}

/* core.perf_close(fd) */
static int l_perf_close(lua_State *L)
{
	close((int)luaL_checkinteger(L, 1));
	return 0;
}

/* core.strerror(errno) -> text */
static int l_strerror(lua_State *L)
{
	lua_pushstring(L, strerror((int)luaL_checkinteger(L, 1)));
	return 1;
}

/* core.getcwd() -> path | nil, msg, errno */
static int l_getcwd(lua_State *L)
{
	char buf[PATH_MAX];

	if (!getcwd(buf, sizeof(buf)))
		return dn_vm_fail(L, errno, "getcwd: %s", strerror(errno));
	lua_pushstring(L, buf);
	return 1;
}

/* core.open_nonblock(path) -> fd | nil, msg, errno: open for reading,
 * non-blocking and close-on-exec (for fds the loop waits on, such as
 * trace_pipe) */
static int l_open_nonblock(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0)
		return dn_vm_fail(L, errno, "cannot open %s: %s", path, strerror(errno));
	lua_pushinteger(L, fd);
	return 1;
}

/* core.read_nonblock(fd [, max]) -> bytes | "" (nothing to read now) |
 * nil (end of file) | nil, msg, errno */
static int l_read_nonblock(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	size_t max = (size_t)luaL_optinteger(L, 2, 65536);
	luaL_Buffer b;
	char *p;
	ssize_t n;

	if (max > LUAL_BUFFERSIZE)
		max = LUAL_BUFFERSIZE;
	luaL_buffinit(L, &b);
	p = luaL_prepbuffer(&b);
	n = read(fd, p, max);
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR) {
			lua_pushliteral(L, "");
			return 1;
		}
		return dn_vm_fail(L, errno, "read: %s", strerror(errno));
	}
	if (n == 0)
		return 0;
	luaL_addsize(&b, (size_t)n);
	luaL_pushresult(&b);
	return 1;
}

/* core.stat(path) -> { mode, uid, gid, dir, link, size } | nil, msg (lstat:
 * a link is not followed) */
static int l_stat(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct stat st;

	if (lstat(path, &st) != 0)
		return dn_vm_fail(L, errno, "%s: %s", path, strerror(errno));
	lua_createtable(L, 0, 5);
	lua_pushinteger(L, st.st_mode & 07777);
	lua_setfield(L, -2, "mode");
	lua_pushinteger(L, st.st_uid);
	lua_setfield(L, -2, "uid");
	lua_pushinteger(L, st.st_gid);
	lua_setfield(L, -2, "gid");
	lua_pushboolean(L, S_ISDIR(st.st_mode));
	lua_setfield(L, -2, "dir");
	lua_pushboolean(L, S_ISLNK(st.st_mode));
	lua_setfield(L, -2, "link");
	lua_pushnumber(L, (lua_Number)st.st_size);
	lua_setfield(L, -2, "size");
	return 1;
}

/* core.open_records(path) -> fd | nil, msg, errno: create (or empty) an
 * output of whole records; write them with core.write_record. */
static int l_open_records(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0)
		return dn_vm_fail(L, errno, "cannot write %s: %s", path, strerror(errno));
	lua_pushinteger(L, fd);
	return 1;
}

/* core.write_record(fd, text) -> true | nil, msg, errno: write all of
 * text. When that fails part way (a full disk writes what fits, then
 * fails), a file is cut back to where the record began, so what it holds
 * is whole records only. */
static int l_write_record(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	size_t len, done = 0;
	const char *text = luaL_checklstring(L, 2, &len);
	off_t start = lseek(fd, 0, SEEK_CUR);

	while (done < len) {
		ssize_t n = write(fd, text + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int err = n < 0 ? errno : ENOSPC;

			if (start >= 0 && done > 0 && ftruncate(fd, start) == 0)
				lseek(fd, start, SEEK_SET);
			return dn_vm_fail(L, err, "%s", strerror(err));
		}
		done += (size_t)n;
	}
	lua_pushboolean(L, 1);
	return 1;
}

void dn_sys_open(lua_State *L)
{
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "monotonic", l_monotonic },
		{ "monotonic_ns", l_monotonic_ns },
		{ "realtime", l_realtime },
		{ "boottime", l_boottime },
		{ "release_compiler_memory", l_release_compiler_memory },
		{ "rss_kb", l_rss_kb },
		{ "cputime", l_cputime },
		{ "uname", l_uname },
		{ "ids", l_ids },
		{ "caps", l_caps },
		{ "isatty", l_isatty },
		{ "perf_event_probe", l_perf_event_probe },
		{ "perf_open", l_perf_open },
		{ "perf_read", l_perf_read },
		{ "perf_read_group", l_perf_read_group },
		{ "perf_close", l_perf_close },
		{ "strerror", l_strerror },
		{ "stat", l_stat },
		{ "open_nonblock", l_open_nonblock },
		{ "getcwd", l_getcwd },
		{ "read_nonblock", l_read_nonblock },
		{ "open_records", l_open_records },
		{ "write_record", l_write_record },
		{ NULL, NULL },
	};
	/* clang-format on */
	dn_vm_setfuncs(L, fns);
	lua_pushstring(L, LIBBCC_VERSION);
	lua_setfield(L, -2, "libbcc_version");
}
