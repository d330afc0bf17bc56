/*
 * dn_procfs.c - fast /proc readers for the process monitor.
 *
 * A process table (userdata "denet.ptab") keeps, per watched process, open
 * fds on /proc/PID (the directory), /proc/PID/stat, /proc/PID/io and
 * /proc/PID/fd; smaps_rollup is opened at each (rarer) PSS read, since it
 * binds to the address space at open and exec replaces that. A sample re-reads them with pread at offset 0
 * (procfs regenerates the text) and fstat (the fd directory's size is the
 * number of open fds on Linux >= 6.2): three syscalls per process, no
 * open/close, no path lookups. An fd on /proc/PID/... stays bound to the
 * process it was opened for, so a PID reused by a new process reads as
 * gone instead of silently becoming somebody else.
 *
 * A process the caller marks as not run since its last read is not read;
 * one that exited since (a pidfd says so, all of them in one poll after
 * the reads) is read after all, so a child whose parent reaped it during
 * the sample is never counted both in its last reading and in the
 * parent's reaped-children times.
 *
 * Results are written into a caller-supplied array of struct dn_psample
 * (the Lua side views it through the FFI with the same declaration; see
 * lib/denet/procfs.lua; declared once in bpf-src/dn_records.h).
 *
 * Depends only on libc and procfs.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "dn.h"

#define PTAB_MT "denet.ptab"

/* sample() flags */
enum { WANT_PSS = 1, WANT_STATUS = 2 };

struct pent {
	int pid;
	int dir_fd, stat_fd, io_fd, fd_dir, status_fd;
	int pidfd; /* readable once the process exited; -1: none (never skipped) */
};

struct ptab {
	struct pent *e;
	int n, cap;
	struct pollfd *pfd; /* the skipped entries' pidfds, one poll per sample */
	int *pfd_at;        /* their indices in e */
	int pfd_cap;
};

static void pent_close(struct pent *p)
{
	if (p->stat_fd >= 0)
		close(p->stat_fd);
	if (p->io_fd >= 0)
		close(p->io_fd);
	if (p->fd_dir >= 0)
		close(p->fd_dir);
	if (p->dir_fd >= 0)
		close(p->dir_fd);
	if (p->status_fd >= 0)
		close(p->status_fd);
	if (p->pidfd >= 0)
		close(p->pidfd);
	p->stat_fd = p->io_fd = p->fd_dir = p->dir_fd = p->status_fd = p->pidfd = -1;
}

static int open_in(int dirfd, const char *name, int flags)
{
	return openat(dirfd, name, flags | O_CLOEXEC);
}

/* Parse /proc/PID/stat text. The comm may hold spaces and parentheses:
 * it runs from the first '(' to the last ')'. */
int dn_procfs_parse_stat(const char *buf, struct dn_psample *s)
{
	const char *l = strchr(buf, '('), *r = strrchr(buf, ')');
	unsigned long long v[50];
	const char *p;
	int i = 0;
	size_t len;

	if (!l || !r || r < l)
		return -1;
	len = (size_t)(r - l - 1);
	if (len >= sizeof(s->comm))
		len = sizeof(s->comm) - 1;
	memcpy(s->comm, l + 1, len);
	s->comm[len] = '\0';
	p = r + 1;
	while (*p == ' ')
		p++;
	if (!*p)
		return -1; /* nothing after the comm */
	s->state = *p;
	p++;
	/* fields 4.. (ppid onwards) */
	while (*p && i < 50) {
		char *end;

		while (*p == ' ')
			p++;
		if (!*p || *p == '\n')
			break;
		v[i++] = strtoull(p, &end, 10);
		if (end == p) {
			/* negative numbers (priority, nice) */
			long long sv = strtoll(p, &end, 10);

			v[i - 1] = (unsigned long long)sv;
			if (end == p)
				break;
		}
		p = end;
	}
	if (i < 36)
		return -1;
	/* v[k] is field k+4 of proc(5) */
	s->ppid = (int32_t)v[0];
	s->minflt = v[6];
	s->cminflt = v[7];
	s->majflt = v[8];
	s->cmajflt = v[9];
	s->utime = v[10];
	s->stime = v[11];
	s->cutime = v[12];
	s->cstime = v[13];
	s->threads = (int32_t)v[16];
	s->starttime = v[18];
	s->vsize = v[19];
	s->rss_pages = v[20];
	s->processor = (int32_t)v[35];
	return 0;
}

static unsigned long long field_after(const char *buf, const char *key)
{
	const char *p = strstr(buf, key);

	if (!p)
		return 0;
	p += strlen(key);
	while (*p == ' ' || *p == '\t' || *p == ':')
		p++;
	return strtoull(p, NULL, 10);
}

void dn_procfs_parse_io(const char *buf, struct dn_psample *s)
{
	s->rchar = field_after(buf, "rchar");
	s->wchar = field_after(buf, "wchar");
	s->read_bytes = field_after(buf, "read_bytes");
	s->write_bytes = field_after(buf, "\nwrite_bytes");
	s->cancelled_write_bytes = field_after(buf, "cancelled_write_bytes");
	s->flags |= DN_PS_IO;
}

void dn_procfs_parse_status(const char *buf, struct dn_psample *s)
{
	s->nvcsw = field_after(buf, "\nvoluntary_ctxt_switches");
	s->nivcsw = field_after(buf, "nonvoluntary_ctxt_switches");
	s->flags |= DN_PS_CTXSW;
}

static ssize_t reread(int fd, char *buf, size_t size)
{
	ssize_t n = pread(fd, buf, size - 1, 0);

	if (n >= 0)
		buf[n] = '\0';
	return n;
}

/* Read one process into s. 0, or -1 when it has gone. */
static int pent_sample(struct pent *p, struct dn_psample *s, int want)
{
	char buf[4096];
	ssize_t n;
	struct stat st;

	memset(s, 0, sizeof(*s));
	s->pid = p->pid;
	s->fd_count = -1;
	n = reread(p->stat_fd, buf, sizeof(buf));
	if (n <= 0 || dn_procfs_parse_stat(buf, s) < 0) {
		s->flags = DN_PS_GONE;
		return -1;
	}
	if (p->io_fd >= 0 && reread(p->io_fd, buf, sizeof(buf)) > 0)
		dn_procfs_parse_io(buf, s);
	if (p->fd_dir >= 0 && fstat(p->fd_dir, &st) == 0 && st.st_size > 0) {
		s->fd_count = (int32_t)st.st_size;
	} else if (p->fd_dir >= 0) {
		/* kernels before 6.2 report no size: count the entries */
		int dup_fd = dup(p->fd_dir);
		DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
		struct dirent *de;
		int c = 0;

		if (d) {
			rewinddir(d);
			while ((de = readdir(d)))
				if (de->d_name[0] != '.')
					c++;
			closedir(d);
			s->fd_count = c;
		} else if (dup_fd >= 0) {
			close(dup_fd);
		}
	}
	if (want & WANT_PSS) {
		int fd = open_in(p->dir_fd, "smaps_rollup", O_RDONLY);

		if (fd >= 0) {
			if (reread(fd, buf, sizeof(buf)) > 0) {
				s->pss_kb = field_after(buf, "\nPss:");
				/* USS: the pages only this process maps */
				s->uss_kb = field_after(buf, "\nPrivate_Clean:") + field_after(buf, "\nPrivate_Dirty:");
				s->flags |= DN_PS_PSS;
			}
			close(fd);
		}
	}
	if ((want & WANT_STATUS) && p->status_fd >= 0 && reread(p->status_fd, buf, sizeof(buf)) > 0)
		dn_procfs_parse_status(buf, s);
	return 0;
}

static void ptab_release(void *obj)
{
	struct ptab *t = obj;
	int i;

	for (i = 0; i < t->n; i++)
		pent_close(&t->e[i]);
	free(t->e);
	free(t->pfd);
	free(t->pfd_at);
	t->e = NULL;
	t->pfd = NULL;
	t->pfd_at = NULL;
	t->n = t->cap = t->pfd_cap = 0;
}

/* core.ptab_new() -> table of watched processes (its fds are closed by
 * the collector or at exit) */
static int l_ptab_new(lua_State *L)
{
	struct ptab *t = lua_newuserdata(L, sizeof(*t));

	memset(t, 0, sizeof(*t));
	luaL_getmetatable(L, PTAB_MT);
	lua_setmetatable(L, -2);
	dn_cleanup_add(t, ptab_release);
	return 1;
}

static struct ptab *check_ptab(lua_State *L)
{
	return luaL_checkudata(L, 1, PTAB_MT);
}

static int find(struct ptab *t, int pid)
{
	int i;

	for (i = 0; i < t->n; i++)
		if (t->e[i].pid == pid)
			return i;
	return -1;
}

/* t:add(pid) -> true | nil, msg, errno. Opens the process's files now:
 * ENOENT/ESRCH when it does not exist, EACCES when it may not be read. */
static int l_ptab_add(lua_State *L)
{
	struct ptab *t = check_ptab(L);
	int pid = (int)luaL_checkinteger(L, 2);
	char path[64];
	struct pent e;
	int dir, stat_err;

	if (find(t, pid) >= 0) {
		lua_pushboolean(L, 1);
		return 1;
	}
	snprintf(path, sizeof(path), "/proc/%d", pid);
	dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0)
		return dn_vm_fail(L, errno, "no process %d", pid);
	e.pid = pid;
	e.stat_fd = open_in(dir, "stat", O_RDONLY);
	stat_err = errno;
	e.io_fd = open_in(dir, "io", O_RDONLY);
	e.fd_dir = open_in(dir, "fd", O_RDONLY | O_DIRECTORY);
	e.status_fd = open_in(dir, "status", O_RDONLY);
	e.dir_fd = dir; /* bound to this process: a reused pid reads as gone */
	e.pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (e.stat_fd < 0) {
		pent_close(&e);
		return dn_vm_fail(L, stat_err, "cannot read /proc/%d/stat: %s", pid, strerror(stat_err));
	}
	if (t->n == t->cap) {
		int nc = t->cap ? t->cap * 2 : 64;
		struct pent *ne = realloc(t->e, sizeof(*ne) * (size_t)nc);

		if (!ne) {
			pent_close(&e);
			return luaL_error(L, "out of memory");
		}
		t->e = ne;
		t->cap = nc;
	}
	if (t->pfd_cap < t->cap) {
		struct pollfd *np = realloc(t->pfd, sizeof(*np) * (size_t)t->cap);
		int *na = np ? realloc(t->pfd_at, sizeof(*na) * (size_t)t->cap) : NULL;

		if (np)
			t->pfd = np;
		if (!na) {
			pent_close(&e);
			return luaL_error(L, "out of memory");
		}
		t->pfd_at = na;
		t->pfd_cap = t->cap;
	}
	t->e[t->n++] = e;
	lua_pushboolean(L, 1);
	/* whether io (and fd) were readable: attaching to another user's
	 * process without privileges leaves them closed */
	lua_pushboolean(L, e.io_fd >= 0);
	return 2;
}

/* t:remove(pid) */
static int l_ptab_remove(lua_State *L)
{
	struct ptab *t = check_ptab(L);
	int i = find(t, (int)luaL_checkinteger(L, 2));

	/* keep insertion order: parents were added before their children, and
	 * sampling ancestors first means a child reaped while we read is never
	 * counted twice (in itself and in its parent's reaped-children times) */
	if (i >= 0) {
		pent_close(&t->e[i]);
		memmove(&t->e[i], &t->e[i + 1], sizeof(*t->e) * (size_t)(t->n - i - 1));
		t->n--;
	}
	return 0;
}

/* t:count() -> processes watched */
static int l_ptab_count(lua_State *L)
{
	lua_pushinteger(L, check_ptab(L)->n);
	return 1;
}

/* t:sample(buf, max, want_pss, want_status [, skip]) -> n
 * Fill buf (cdata array of struct dn_psample, at least max entries) with
 * one entry per watched process, in the order they were added; gone ones
 * are flagged DN_PS_GONE. skip (cdata uint8_t array in the same order)
 * marks processes not to read this time (DN_PS_SKIPPED), unless their
 * pidfd says they exited: those are read after all the others. */
static int l_ptab_sample(lua_State *L)
{
	struct ptab *t = check_ptab(L);
	struct dn_psample *buf = (struct dn_psample *)lua_topointer(L, 2);
	int max = (int)luaL_checkinteger(L, 3);
	int want = (lua_toboolean(L, 4) ? WANT_PSS : 0) | (lua_toboolean(L, 5) ? WANT_STATUS : 0);
	const uint8_t *skip = lua_type(L, 6) == 10 ? (const uint8_t *)lua_topointer(L, 6) : NULL;
	int i, n = 0, k = 0;

	if (lua_type(L, 2) != 10 || !buf)
		return luaL_argerror(L, 2, "cdata buffer expected");
	/* one entry per watched process: buf[i] is e[i]'s */
	for (i = 0; i < t->n && n < max; i++) {
		if (skip && skip[i] && t->e[i].pidfd >= 0) {
			memset(&buf[n], 0, sizeof(buf[n]));
			buf[n].pid = t->e[i].pid;
			buf[n].flags = DN_PS_SKIPPED;
			t->pfd[k].fd = t->e[i].pidfd;
			t->pfd[k].events = POLLIN;
			t->pfd[k].revents = 0;
			t->pfd_at[k++] = i;
			n++;
			continue;
		}
		pent_sample(&t->e[i], &buf[n++], want);
	}
	/* after every read: one that exited is read now (its parent, read
	 * before, may have reaped it: then it reads as gone) */
	if (k > 0 && poll(t->pfd, (nfds_t)k, 0) > 0)
		for (i = 0; i < k; i++)
			if (t->pfd[i].revents)
				pent_sample(&t->e[t->pfd_at[i]], &buf[t->pfd_at[i]], want);
	lua_pushinteger(L, n);
	return 1;
}

/* t:pids() -> { pid, ... } in sampling order */
static int l_ptab_pids(lua_State *L)
{
	struct ptab *t = check_ptab(L);
	int i;

	lua_createtable(L, t->n, 0);
	for (i = 0; i < t->n; i++) {
		lua_pushinteger(L, t->e[i].pid);
		lua_rawseti(L, -2, i + 1);
	}
	return 1;
}

static int l_ptab_gc(lua_State *L)
{
	struct ptab *t = check_ptab(L);

	dn_cleanup_remove(t);
	ptab_release(t);
	return 0;
}

/* core.read_stat(pid) -> ppid, starttime, comm | nil: one-off read of
 * /proc/PID/stat (discovering processes, checking pid reuse). */
static int l_read_stat(lua_State *L)
{
	char path[64], buf[4096];
	struct dn_psample s;
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)luaL_checkinteger(L, 1));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return dn_vm_fail(L, errno, "%s: %s", path, strerror(errno));
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return dn_vm_fail(L, ESRCH, "%s: empty", path);
	buf[n] = '\0';
	memset(&s, 0, sizeof(s));
	if (dn_procfs_parse_stat(buf, &s) < 0)
		return dn_vm_fail(L, EINVAL, "%s: unparsable", path);
	lua_pushinteger(L, s.ppid);
	lua_pushnumber(L, (lua_Number)s.starttime);
	lua_pushstring(L, s.comm);
	lua_pushinteger(L, s.state);
	return 4;
}

/* core.list_pids() -> { pid, ... } of every process now */
static int l_list_pids(lua_State *L)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	int n = 0;

	if (!d)
		return dn_vm_fail(L, errno, "/proc: %s", strerror(errno));
	lua_newtable(L);
	while ((de = readdir(d)))
		if (isdigit((unsigned char)de->d_name[0])) {
			lua_pushinteger(L, atoi(de->d_name));
			lua_rawseti(L, -2, ++n);
		}
	closedir(d);
	return 1;
}

/* core.list_dir(path) -> { name, ... } without . and .. | nil, msg, errno */
static int l_list_dir(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	DIR *d = opendir(path);
	struct dirent *de;
	int n = 0;

	if (!d)
		return dn_vm_fail(L, errno, "%s: %s", path, strerror(errno));
	lua_newtable(L);
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
			lua_pushstring(L, de->d_name);
			lua_rawseti(L, -2, ++n);
		}
	closedir(d);
	return 1;
}

/* core.readlink(path) -> target | nil, msg, errno */
static int l_readlink(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char buf[4096];
	ssize_t n = readlink(path, buf, sizeof(buf) - 1);

	if (n < 0)
		return dn_vm_fail(L, errno, "%s: %s", path, strerror(errno));
	lua_pushlstring(L, buf, (size_t)n);
	return 1;
}

/* core.net_dev_bytes(pid) -> rx, tx | nil: bytes received and sent on every
 * interface but loopback of the network namespace pid is in */
void dn_procfs_parse_netdev(char *buf, unsigned long long *rx, unsigned long long *tx)
{
	char *line, *save = NULL;

	*rx = *tx = 0;
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *colon = strchr(line, ':'), *name = line;
		unsigned long long v[9];

		if (!colon)
			continue;
		*colon = '\0';
		while (*name == ' ')
			name++;
		if (strcmp(name, "lo") == 0)
			continue;
		if (sscanf(colon + 1, "%llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
		           &v[5], &v[6], &v[7], &v[8]) == 9) {
			*rx += v[0];
			*tx += v[8];
		}
	}
}

static int l_net_dev_bytes(lua_State *L)
{
	char path[64], buf[16384];
	unsigned long long rx = 0, tx = 0;
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/net/dev", (int)luaL_checkinteger(L, 1));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	dn_procfs_parse_netdev(buf, &rx, &tx);
	lua_pushnumber(L, (lua_Number)rx);
	lua_pushnumber(L, (lua_Number)tx);
	return 2;
}

/* core.clk_tck(), core.page_size() */
static int l_clk_tck(lua_State *L)
{
	lua_pushinteger(L, sysconf(_SC_CLK_TCK));
	return 1;
}

static int l_page_size(lua_State *L)
{
	lua_pushinteger(L, sysconf(_SC_PAGESIZE));
	return 1;
}

/* core.read_file(path [, max]) -> text | nil, msg, errno (procfs/sysfs
 * files in one read, for callers outside the hot path) */
static int l_read_file(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	size_t max = (size_t)luaL_optinteger(L, 2, 65536);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	luaL_Buffer b;
	char buf[4096];
	ssize_t n;
	size_t total = 0;

	if (fd < 0)
		return dn_vm_fail(L, errno, "%s: %s", path, strerror(errno));
	luaL_buffinit(L, &b);
	while (total < max && (n = read(fd, buf, sizeof(buf))) > 0) {
		luaL_addlstring(&b, buf, (size_t)n);
		total += (size_t)n;
	}
	close(fd);
	luaL_pushresult(&b);
	return 1;
}

void dn_procfs_open(lua_State *L)
{
	/* clang-format off */
	static const luaL_Reg methods[] = {
		{ "add", l_ptab_add },
		{ "remove", l_ptab_remove },
		{ "count", l_ptab_count },
		{ "sample", l_ptab_sample },
		{ "pids", l_ptab_pids },
		{ NULL, NULL },
	};
	/* clang-format on */
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "ptab_new", l_ptab_new },
		{ "read_stat", l_read_stat },
		{ "list_pids", l_list_pids },
		{ "clk_tck", l_clk_tck },
		{ "page_size", l_page_size },
		{ "read_file", l_read_file },
		{ "list_dir", l_list_dir },
		{ "readlink", l_readlink },
		{ "net_dev_bytes", l_net_dev_bytes },
		{ NULL, NULL },
	};
	/* clang-format on */
	dn_vm_newclass(L, PTAB_MT, l_ptab_gc, methods);
	dn_vm_setfuncs(L, fns);
}
