/*
 * dn_bcc_attach.c - a module's loaded programs attached to tracepoints,
 * raw tracepoints, uprobes, kprobes, fentry and perf events, each
 * attachment kept by the module (detached with it), and what the kernel
 * skipped (a program's misses).
 *
 * Depends on dn_bcc.h and libbcc_bpf's attach functions.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "dn_bcc.h"

/* Record an attachment; returns its handle (1-based index). */
static int add_att(lua_State *L, struct dn_bpf *m, enum att_kind kind, int fd, const char *ev)
{
	if (m->natts == m->catts) {
		int nc = m->catts ? m->catts * 2 : 16;
		struct dn_att *na = realloc(m->atts, sizeof(*na) * (size_t)nc);

		if (!na) {
			struct dn_att tmp = { kind, fd, ev ? strdup(ev) : NULL };
			dn_bcc_detach_one(&tmp);
			luaL_error(L, "out of memory");
			return -1;
		}
		m->atts = na;
		m->catts = nc;
	}
	m->atts[m->natts].kind = kind;
	m->atts[m->natts].fd = fd;
	m->atts[m->natts].ev_name = ev ? strdup(ev) : NULL;
	return ++m->natts;
}

/* Finish an attach: record it and push its handle, or push nil, "cannot
 * attach WHAT: why", errno. */
static int attach_result(lua_State *L, struct dn_bpf *m, enum att_kind kind, int fd, int err, const char *ev,
                         const char *what)
{
	if (fd < 0)
		return dn_vm_fail(L, err, "cannot attach %s: %s", what,
		                  err == ENOENT ? "no such tracepoint, function or file" : strerror(err));
	lua_pushinteger(L, add_att(L, m, kind, fd, ev));
	return 1;
}

/* m:attach_tracepoint(progfd, category, event) -> handle | nil, msg, errno */
static int l_attach_tracepoint(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	int progfd = (int)luaL_checkinteger(L, 2);
	const char *cat = luaL_checkstring(L, 3);
	const char *ev = luaL_checkstring(L, 4);
	struct capture cap;
	int fd, err;

	char what[256];

	dn_bcc_capture_begin(&cap);
	fd = bpf_attach_tracepoint(progfd, cat, ev);
	err = errno;
	dn_bcc_capture_drop(&cap);
	snprintf(what, sizeof(what), "to tracepoint %s:%s", cat, ev);
	return attach_result(L, m, ATT_PERF_FD, fd, err, NULL, what);
}

/* m:attach_raw_tracepoint(progfd, name) -> handle | nil, msg, errno */
static int l_attach_raw_tracepoint(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	int progfd = (int)luaL_checkinteger(L, 2);
	const char *tp = luaL_checkstring(L, 3);
	struct capture cap;
	int fd, err;

	char what[256];

	dn_bcc_capture_begin(&cap);
	fd = bpf_attach_raw_tracepoint(progfd, tp);
	err = errno;
	dn_bcc_capture_drop(&cap);
	snprintf(what, sizeof(what), "to raw tracepoint %s", tp);
	return attach_result(L, m, ATT_RAW_TP, fd, err, NULL, what);
}

/* m:attach_uprobe(progfd, is_return, ev_name, path, offset, pid)
 *   -> handle | nil, msg, errno. offset is the file offset of the probe. */
static int l_attach_uprobe(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	int progfd = (int)luaL_checkinteger(L, 2);
	int ret = lua_toboolean(L, 3);
	const char *ev = luaL_checkstring(L, 4);
	const char *path = luaL_checkstring(L, 5);
	uint64_t off = (uint64_t)luaL_checknumber(L, 6);
	int pid = (int)luaL_optinteger(L, 7, -1);
	struct capture cap;
	int fd, err;

	char what[512];

	dn_bcc_capture_begin(&cap);
	fd = bpf_attach_uprobe(progfd, ret ? BPF_PROBE_RETURN : BPF_PROBE_ENTRY, ev, path, off, pid, 0);
	err = errno;
	dn_bcc_capture_drop(&cap);
	snprintf(what, sizeof(what), "%s to %s+0x%llx", ret ? "uretprobe" : "uprobe", path, (unsigned long long)off);
	return attach_result(L, m, ATT_UPROBE, fd, err, ev, what);
}

/* m:attach_kprobe(progfd, is_return, ev_name, fn_name) -> handle | nil, msg, errno */
static int l_attach_kprobe(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	int progfd = (int)luaL_checkinteger(L, 2);
	int ret = lua_toboolean(L, 3);
	const char *ev = luaL_checkstring(L, 4);
	const char *fn = luaL_checkstring(L, 5);
	struct capture cap;
	int fd, err;

	char what[256];

	dn_bcc_capture_begin(&cap);
	fd = bpf_attach_kprobe(progfd, ret ? BPF_PROBE_RETURN : BPF_PROBE_ENTRY, ev, fn, 0, 0);
	err = errno;
	dn_bcc_capture_drop(&cap);
	snprintf(what, sizeof(what), "%s to %s", ret ? "kretprobe" : "kprobe", fn);
	return attach_result(L, m, ATT_KPROBE, fd, err, ev, what);
}

/* m:attach_kfunc(progfd) -> handle | nil, msg, errno: fentry/fexit
 * programs, loaded with their attach type, attach through a BPF link. */
static int l_attach_kfunc(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	int progfd = (int)luaL_checkinteger(L, 2);
	struct capture cap;
	int fd, err;

	dn_bcc_capture_begin(&cap);
	fd = bpf_attach_kfunc(progfd);
	err = errno;
	dn_bcc_capture_drop(&cap);
	return attach_result(L, m, ATT_RAW_TP, fd, err, NULL, "the fentry/fexit program");
}

/* m:attach_perf_event(progfd, type, config, period, freq, pid, cpu)
 *   -> handle | nil, msg, errno. One perf event; the Lua side loops over
 *   CPUs. */
static int l_attach_perf_event(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	int progfd = (int)luaL_checkinteger(L, 2);
	uint32_t type = (uint32_t)luaL_checkinteger(L, 3);
	uint32_t config = (uint32_t)luaL_checkinteger(L, 4);
	uint64_t period = (uint64_t)luaL_optnumber(L, 5, 0);
	uint64_t freq = (uint64_t)luaL_optnumber(L, 6, 0);
	int pid = (int)luaL_optinteger(L, 7, -1);
	int cpu = (int)luaL_optinteger(L, 8, -1);
	struct capture cap;
	int fd, err;

	char what[128];

	dn_bcc_capture_begin(&cap);
	fd = bpf_attach_perf_event(progfd, type, config, period, freq, pid, cpu, -1);
	err = errno;
	dn_bcc_capture_drop(&cap);
	snprintf(what, sizeof(what), "perf event type %u config %u on cpu %d", type, config, cpu);
	return attach_result(L, m, ATT_PERF_FD, fd, err, NULL, what);
}

/* m:detach(handle): detach one attachment; detaching twice is harmless. */
static int l_module_detach(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	int h = (int)luaL_checkinteger(L, 2);

	if (h < 1 || h > m->natts)
		return luaL_error(L, "no attachment %d", h);
	if (m->atts[h - 1].fd >= 0)
		dn_bcc_detach_one(&m->atts[h - 1]);
	return 0;
}

/* m:detach_all(): detach every attachment, the perf events closed in
 * parallel (detach_start); the programs and maps stay. On return no
 * program of the module runs any more, so its maps hold still. */
static int l_module_detach_all(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);

	dn_bcc_detach_start(m);
	dn_bcc_detach_finish(m);
	return 0;
}

/* m:misses(name) -> how many times the kernel skipped loaded function
 * `name` (bpf_prog_info.recursion_misses: another BPF program, or a map
 * operation from user space, held the CPU), or nil when the kernel does
 * not say or the function is not loaded */
static int l_module_misses(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	const char *name = luaL_checkstring(L, 2);
	struct bpf_prog_info info;
	__u32 len = sizeof(info);
	int i;

	for (i = 0; i < m->nprogs; i++)
		if (strcmp(m->progs[i].name, name) == 0) {
			memset(&info, 0, sizeof(info));
			if (bpf_obj_get_info_by_fd(m->progs[i].fd, &info, &len) != 0 ||
			    len < offsetof(struct bpf_prog_info, recursion_misses) + sizeof(info.recursion_misses))
				break;
			lua_pushnumber(L, (lua_Number)info.recursion_misses);
			return 1;
		}
	lua_pushnil(L);
	return 1;
}

/* m:attachments() -> number still attached */
static int l_module_attachments(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	int i, n = 0;

	for (i = 0; i < m->natts; i++)
		n += m->atts[i].fd >= 0;
	lua_pushinteger(L, n);
	return 1;
}

/* clang-format off */
const luaL_Reg dn_bcc_attach_methods[] = {
	{ "attach_tracepoint", l_attach_tracepoint },
	{ "attach_raw_tracepoint", l_attach_raw_tracepoint },
	{ "attach_uprobe", l_attach_uprobe },
	{ "attach_kprobe", l_attach_kprobe },
	{ "attach_perf_event", l_attach_perf_event },
	{ "attach_kfunc", l_attach_kfunc },
	{ "detach", l_module_detach },
	{ "detach_all", l_module_detach_all },
	{ "attachments", l_module_attachments },
	{ "misses", l_module_misses },
	{ NULL, NULL },
};
/* clang-format on */
