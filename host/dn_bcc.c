/*
 * dn_bcc.c - libbcc from Lua: compile BPF C, load programs, attach them,
 * describe tables, and read and write maps.
 *
 * Depends on libbcc's C API (bcc_common.h, libbpf.h) and dn_cleanup_* for
 * release on every exit path. A module is a userdata "denet.bpf_module"
 * that owns the libbcc module, its loaded program fds and its attachments;
 * __gc and :close() release them, and so does dn_cleanup_run() at exit.
 *
 * libbcc reports compile and verifier errors only on stderr, so both are
 * captured with stderr redirected into a memfd and returned to Lua as the
 * error message (clang's diagnostics carry the line numbers).
 *
 * Map functions take buffers as cdata (their payload address is what
 * lua_topointer returns) or, read-only, as strings; the Lua side sizes them
 * from the table's key and leaf sizes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include <bcc/bcc_common.h>
#include <bcc/libbpf.h>
#include <linux/perf_event.h>

#include "dn.h"

#define MODULE_MT "denet.bpf_module"
/* LuaJIT's type tag for cdata; lua.h does not name it. */
#define DN_LUA_TCDATA 10

enum att_kind { ATT_PERF_FD, ATT_RAW_TP, ATT_UPROBE, ATT_KPROBE };

struct dn_att {
	enum att_kind kind;
	int fd;
	char *ev_name; /* uprobe/kprobe event name, for tracefs removal */
};

struct dn_prog {
	char *name;
	int type;
	int fd;
};

struct dn_bpf {
	void *mod;
	struct dn_prog *progs;
	int nprogs;
	struct dn_att *atts;
	int natts, catts;
};

/* --- stderr capture --------------------------------------------------- */

struct capture {
	int saved;
	int mfd;
};

static void capture_begin(struct capture *c)
{
	fflush(stderr);
	c->saved = dup(STDERR_FILENO);
	c->mfd = memfd_create("denet-stderr", MFD_CLOEXEC);
	if (c->saved >= 0 && c->mfd >= 0)
		dup2(c->mfd, STDERR_FILENO);
}

/* Restore stderr and push what was written meanwhile (a string). */
static void capture_end(lua_State *L, struct capture *c)
{
	luaL_Buffer b;
	char buf[4096];
	ssize_t n;

	fflush(stderr);
	if (c->saved >= 0) {
		dup2(c->saved, STDERR_FILENO);
		close(c->saved);
	}
	luaL_buffinit(L, &b);
	if (c->mfd >= 0) {
		lseek(c->mfd, 0, SEEK_SET);
		while ((n = read(c->mfd, buf, sizeof(buf))) > 0)
			luaL_addlstring(&b, buf, (size_t)n);
		close(c->mfd);
	}
	luaL_pushresult(&b);
}

/* Restore stderr and drop what was written (libbcc's own complaints about
 * a failed attach; the caller reports the failure itself). */
static void capture_drop(struct capture *c)
{
	fflush(stderr);
	if (c->saved >= 0) {
		dup2(c->saved, STDERR_FILENO);
		close(c->saved);
	}
	if (c->mfd >= 0)
		close(c->mfd);
}

/* --- module lifetime ------------------------------------------------------ */

static void detach_one(struct dn_att *a)
{
	switch (a->kind) {
	case ATT_PERF_FD:
		bpf_close_perf_event_fd(a->fd);
		break;
	case ATT_RAW_TP:
		close(a->fd);
		break;
	case ATT_UPROBE:
		bpf_close_perf_event_fd(a->fd);
		if (a->ev_name)
			bpf_detach_uprobe(a->ev_name);
		break;
	case ATT_KPROBE:
		bpf_close_perf_event_fd(a->fd);
		if (a->ev_name)
			bpf_detach_kprobe(a->ev_name);
		break;
	}
	free(a->ev_name);
	a->ev_name = NULL;
	a->fd = -1;
}

static void module_release(void *obj)
{
	struct dn_bpf *m = obj;
	int i;

	if (!m->mod)
		return;
	/* detach first, so no program runs while its maps go away */
	for (i = m->natts - 1; i >= 0; i--)
		if (m->atts[i].fd >= 0)
			detach_one(&m->atts[i]);
	for (i = 0; i < m->nprogs; i++) {
		close(m->progs[i].fd);
		free(m->progs[i].name);
	}
	free(m->progs);
	free(m->atts);
	m->progs = NULL;
	m->atts = NULL;
	m->nprogs = m->natts = m->catts = 0;
	bpf_module_destroy(m->mod);
	m->mod = NULL;
}

static struct dn_bpf *check_module(lua_State *L, int idx)
{
	struct dn_bpf *m = luaL_checkudata(L, idx, MODULE_MT);

	if (!m->mod)
		luaL_error(L, "BPF module is closed");
	return m;
}

static int module_gc(lua_State *L)
{
	struct dn_bpf *m = luaL_checkudata(L, 1, MODULE_MT);

	if (m->mod) {
		dn_cleanup_remove(m);
		module_release(m);
	}
	return 0;
}

/* core.bpf_compile(text_or_path, is_file, cflags [, debug]) -> module | nil, diagnostics
 * Compiles with libbcc; maps are created here (allow_rlimit false: this
 * kernel charges BPF memory to the cgroup). On failure the message is what
 * clang and libbcc printed. On success the second result holds warnings.
 * debug: libbcc's debug flags (bcc/bcc_common.h: 0x4 prints the rewritten source). */
static int l_bpf_compile(lua_State *L)
{
	const char *src = luaL_checkstring(L, 1);
	int is_file = lua_toboolean(L, 2);
	unsigned debug = (unsigned)luaL_optinteger(L, 4, 0);
	const char **cflags = NULL;
	int ncflags = 0, i;
	struct capture cap;
	struct dn_bpf *m;
	void *mod;

	if (!lua_isnoneornil(L, 3)) {
		luaL_checktype(L, 3, LUA_TTABLE);
		ncflags = (int)lua_objlen(L, 3);
		cflags = calloc((size_t)ncflags + 1, sizeof(*cflags));
		if (!cflags)
			return luaL_error(L, "out of memory");
		for (i = 0; i < ncflags; i++) {
			lua_rawgeti(L, 3, i + 1);
			cflags[i] = lua_tostring(L, -1); /* kept alive by the table */
			lua_pop(L, 1);
			if (!cflags[i]) {
				free(cflags);
				return luaL_error(L, "cflags[%d] is not a string", i + 1);
			}
		}
	}
	m = lua_newuserdata(L, sizeof(*m));
	memset(m, 0, sizeof(*m));
	luaL_getmetatable(L, MODULE_MT);
	lua_setmetatable(L, -2);

	capture_begin(&cap);
	if (is_file)
		mod = bpf_module_create_c(src, debug, cflags, ncflags, false, NULL);
	else
		mod = bpf_module_create_c_from_string(src, debug, cflags, ncflags, false, NULL);
	capture_end(L, &cap);
	free(cflags);
	/* stack: ..., module, diagnostics */
	if (!mod) {
		lua_pushnil(L);
		lua_insert(L, -2);
		return 2;
	}
	m->mod = mod;
	dn_cleanup_add(m, module_release);
	return 2;
}

static int l_module_close(lua_State *L)
{
	struct dn_bpf *m = luaL_checkudata(L, 1, MODULE_MT);

	if (m->mod) {
		dn_cleanup_remove(m);
		module_release(m);
	}
	return 0;
}

/* m:functions() -> { name, ... } in definition order */
static int l_module_functions(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	size_t n = bpf_num_functions(m->mod), i;

	lua_createtable(L, (int)n, 0);
	for (i = 0; i < n; i++) {
		lua_pushstring(L, bpf_function_name(m->mod, i));
		lua_rawseti(L, -2, (int)i + 1);
	}
	return 1;
}

/* m:load(name, prog_type [, attach_type]) -> fd | nil, log, errno
 * Loads a function once; later calls return the same fd. The failure
 * message is libbcc's report including the verifier log. */
static int l_module_load(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	const char *name = luaL_checkstring(L, 2);
	int type = (int)luaL_checkinteger(L, 3);
	int attach_type = (int)luaL_optinteger(L, 4, -1);
	struct capture cap;
	struct dn_prog *np;
	void *start;
	int fd, err, i;

	for (i = 0; i < m->nprogs; i++)
		if (strcmp(m->progs[i].name, name) == 0) {
			if (m->progs[i].type != type)
				return dn_vm_fail(L, EINVAL, "function %s is already loaded as another program type",
				                  name);
			lua_pushinteger(L, m->progs[i].fd);
			return 1;
		}
	start = bpf_function_start(m->mod, name);
	if (!start)
		return dn_vm_fail(L, ENOENT, "no BPF function named '%s' in the program", name);
	capture_begin(&cap);
	fd = bcc_func_load(m->mod, type, name, start, (int)bpf_function_size(m->mod, name), bpf_module_license(m->mod),
	                   bpf_module_kern_version(m->mod), 0, NULL, 0, NULL, attach_type);
	err = errno;
	capture_end(L, &cap);
	if (fd < 0) {
		lua_pushnil(L);
		lua_insert(L, -2);
		lua_pushinteger(L, err);
		return 3;
	}
	lua_pop(L, 1);
	np = realloc(m->progs, sizeof(*np) * (size_t)(m->nprogs + 1));
	if (!np) {
		close(fd);
		return luaL_error(L, "out of memory");
	}
	m->progs = np;
	np[m->nprogs].name = strdup(name);
	np[m->nprogs].type = type;
	np[m->nprogs].fd = fd;
	m->nprogs++;
	lua_pushinteger(L, fd);
	return 1;
}

/* Record an attachment; returns its handle (1-based index). */
static int add_att(lua_State *L, struct dn_bpf *m, enum att_kind kind, int fd, const char *ev)
{
	if (m->natts == m->catts) {
		int nc = m->catts ? m->catts * 2 : 16;
		struct dn_att *na = realloc(m->atts, sizeof(*na) * (size_t)nc);

		if (!na) {
			struct dn_att tmp = { kind, fd, ev ? strdup(ev) : NULL };
			detach_one(&tmp);
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
	struct dn_bpf *m = check_module(L, 1);
	int progfd = (int)luaL_checkinteger(L, 2);
	const char *cat = luaL_checkstring(L, 3);
	const char *ev = luaL_checkstring(L, 4);
	struct capture cap;
	int fd, err;

	char what[256];

	capture_begin(&cap);
	fd = bpf_attach_tracepoint(progfd, cat, ev);
	err = errno;
	capture_drop(&cap);
	snprintf(what, sizeof(what), "to tracepoint %s:%s", cat, ev);
	return attach_result(L, m, ATT_PERF_FD, fd, err, NULL, what);
}

/* m:attach_raw_tracepoint(progfd, name) -> handle | nil, msg, errno */
static int l_attach_raw_tracepoint(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	int progfd = (int)luaL_checkinteger(L, 2);
	const char *tp = luaL_checkstring(L, 3);
	struct capture cap;
	int fd, err;

	char what[256];

	capture_begin(&cap);
	fd = bpf_attach_raw_tracepoint(progfd, tp);
	err = errno;
	capture_drop(&cap);
	snprintf(what, sizeof(what), "to raw tracepoint %s", tp);
	return attach_result(L, m, ATT_RAW_TP, fd, err, NULL, what);
}

/* m:attach_uprobe(progfd, is_return, ev_name, path, offset, pid)
 *   -> handle | nil, msg, errno. offset is the file offset of the probe. */
static int l_attach_uprobe(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	int progfd = (int)luaL_checkinteger(L, 2);
	int ret = lua_toboolean(L, 3);
	const char *ev = luaL_checkstring(L, 4);
	const char *path = luaL_checkstring(L, 5);
	uint64_t off = (uint64_t)luaL_checknumber(L, 6);
	int pid = (int)luaL_optinteger(L, 7, -1);
	struct capture cap;
	int fd, err;

	char what[512];

	capture_begin(&cap);
	fd = bpf_attach_uprobe(progfd, ret ? BPF_PROBE_RETURN : BPF_PROBE_ENTRY, ev, path, off, pid, 0);
	err = errno;
	capture_drop(&cap);
	snprintf(what, sizeof(what), "%s to %s+0x%llx", ret ? "uretprobe" : "uprobe", path, (unsigned long long)off);
	return attach_result(L, m, ATT_UPROBE, fd, err, ev, what);
}

/* m:attach_kprobe(progfd, is_return, ev_name, fn_name) -> handle | nil, msg, errno */
static int l_attach_kprobe(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	int progfd = (int)luaL_checkinteger(L, 2);
	int ret = lua_toboolean(L, 3);
	const char *ev = luaL_checkstring(L, 4);
	const char *fn = luaL_checkstring(L, 5);
	struct capture cap;
	int fd, err;

	char what[256];

	capture_begin(&cap);
	fd = bpf_attach_kprobe(progfd, ret ? BPF_PROBE_RETURN : BPF_PROBE_ENTRY, ev, fn, 0, 0);
	err = errno;
	capture_drop(&cap);
	snprintf(what, sizeof(what), "%s to %s", ret ? "kretprobe" : "kprobe", fn);
	return attach_result(L, m, ATT_KPROBE, fd, err, ev, what);
}

/* m:attach_kfunc(progfd) -> handle | nil, msg, errno: fentry/fexit
 * programs, loaded with their attach type, attach through a BPF link. */
static int l_attach_kfunc(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	int progfd = (int)luaL_checkinteger(L, 2);
	struct capture cap;
	int fd, err;

	capture_begin(&cap);
	fd = bpf_attach_kfunc(progfd);
	err = errno;
	capture_drop(&cap);
	return attach_result(L, m, ATT_RAW_TP, fd, err, NULL, "the fentry/fexit program");
}

/* m:attach_perf_event(progfd, type, config, period, freq, pid, cpu)
 *   -> handle | nil, msg, errno. One perf event; the Lua side loops over
 *   CPUs. */
static int l_attach_perf_event(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
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

	capture_begin(&cap);
	fd = bpf_attach_perf_event(progfd, type, config, period, freq, pid, cpu, -1);
	err = errno;
	capture_drop(&cap);
	snprintf(what, sizeof(what), "perf event type %u config %u on cpu %d", type, config, cpu);
	return attach_result(L, m, ATT_PERF_FD, fd, err, NULL, what);
}

/* m:detach(handle): detach one attachment; detaching twice is harmless. */
static int l_module_detach(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	int h = (int)luaL_checkinteger(L, 2);

	if (h < 1 || h > m->natts)
		return luaL_error(L, "no attachment %d", h);
	if (m->atts[h - 1].fd >= 0)
		detach_one(&m->atts[h - 1]);
	return 0;
}

/* m:attachments() -> number still attached */
static int l_module_attachments(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	int i, n = 0;

	for (i = 0; i < m->natts; i++)
		n += m->atts[i].fd >= 0;
	lua_pushinteger(L, n);
	return 1;
}

/* m:tables() -> { name, ... } */
static int l_module_tables(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	size_t n = bpf_num_tables(m->mod), i;

	lua_createtable(L, (int)n, 0);
	for (i = 0; i < n; i++) {
		lua_pushstring(L, bpf_table_name(m->mod, i));
		lua_rawseti(L, -2, (int)i + 1);
	}
	return 1;
}

/* m:table_info(name) -> { fd, type, key_size, leaf_size, key_desc,
 *   leaf_desc, max_entries, flags, fields = {"u32 pid", ...} } | nil */
static int l_module_table_info(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	const char *name = luaL_checkstring(L, 2);
	size_t id = bpf_table_id(m->mod, name), nf, i;

	if (id >= bpf_num_tables(m->mod)) {
		lua_pushnil(L);
		return 1;
	}
	lua_createtable(L, 0, 10);
	lua_pushinteger(L, bpf_table_fd_id(m->mod, id));
	lua_setfield(L, -2, "fd");
	lua_pushinteger(L, bpf_table_type_id(m->mod, id));
	lua_setfield(L, -2, "type");
	lua_pushinteger(L, (lua_Integer)bpf_table_key_size_id(m->mod, id));
	lua_setfield(L, -2, "key_size");
	lua_pushinteger(L, (lua_Integer)bpf_table_leaf_size_id(m->mod, id));
	lua_setfield(L, -2, "leaf_size");
	lua_pushstring(L, bpf_table_key_desc_id(m->mod, id));
	lua_setfield(L, -2, "key_desc");
	lua_pushstring(L, bpf_table_leaf_desc_id(m->mod, id));
	lua_setfield(L, -2, "leaf_desc");
	lua_pushinteger(L, (lua_Integer)bpf_table_max_entries_id(m->mod, id));
	lua_setfield(L, -2, "max_entries");
	lua_pushinteger(L, bpf_table_flags_id(m->mod, id));
	lua_setfield(L, -2, "flags");
	/* the record type passed to perf_submit / ringbuf_output, if any */
	nf = bpf_perf_event_fields(m->mod, name);
	lua_createtable(L, (int)nf, 0);
	for (i = 0; i < nf; i++) {
		lua_pushstring(L, bpf_perf_event_field(m->mod, name, i));
		lua_rawseti(L, -2, (int)i + 1);
	}
	lua_setfield(L, -2, "fields");
	return 1;
}

/* --- maps, by fd --------------------------------------------------------- */

/* A writable buffer argument: cdata (its payload) or, when ro, a string. */
static void *tobuf(lua_State *L, int idx, size_t need, int ro)
{
	int t = lua_type(L, idx);

	if (t == DN_LUA_TCDATA)
		return (void *)lua_topointer(L, idx);
	if (ro && t == LUA_TSTRING) {
		if (lua_objlen(L, idx) < need)
			luaL_error(L, "buffer argument #%d is %d bytes, need %d", idx, (int)lua_objlen(L, idx),
			           (int)need);
		return (void *)lua_tostring(L, idx);
	}
	luaL_argerror(L, idx, "cdata buffer expected");
	return NULL;
}

/* m:function_code(name) -> the compiled instructions (bytes) | nil, msg */
static int l_module_function_code(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	const char *name = luaL_checkstring(L, 2);
	void *start = bpf_function_start(m->mod, name);

	if (!start)
		return dn_vm_fail(L, ENOENT, "no BPF function named '%s' in the program", name);
	lua_pushlstring(L, start, bpf_function_size(m->mod, name));
	return 1;
}

/* The table id of name, and whether `which` is "key" (else "leaf"). */
static size_t table_part(lua_State *L, struct dn_bpf *m, int *is_key)
{
	const char *name = luaL_checkstring(L, 2);
	const char *which = luaL_checkstring(L, 3);
	size_t id = bpf_table_id(m->mod, name);

	if (id >= bpf_num_tables(m->mod))
		luaL_error(L, "no BPF table named '%s'", name);
	*is_key = strcmp(which, "key") == 0;
	return id;
}

/* m:table_print(name, "key"|"leaf", buf) -> text | nil, msg: libbcc's
 * printing of a key or leaf (as bcc's key_sprintf/leaf_sprintf) */
static int l_module_table_print(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	int is_key, rc;
	size_t id = table_part(L, m, &is_key);
	const void *val = tobuf(L, 4, 0, 1);
	size_t size = is_key ? bpf_table_key_size_id(m->mod, id) : bpf_table_leaf_size_id(m->mod, id);
	/* hex digits, separators and braces: 8 chars a byte is ample */
	size_t len = size * 8 + 64;
	char *buf = malloc(len);

	if (!buf)
		return luaL_error(L, "out of memory");
	rc = is_key ? bpf_table_key_snprintf(m->mod, id, buf, len, val)
	            : bpf_table_leaf_snprintf(m->mod, id, buf, len, val);
	if (rc != 0) {
		free(buf);
		return dn_vm_fail(L, EINVAL, "libbcc cannot print this %s", is_key ? "key" : "leaf");
	}
	lua_pushstring(L, buf);
	free(buf);
	return 1;
}

/* m:table_scan(name, "key"|"leaf", text, buf_out) -> true | nil, msg: the
 * reverse of table_print */
static int l_module_table_scan(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	int is_key, rc;
	size_t id = table_part(L, m, &is_key);
	const char *text = luaL_checkstring(L, 4);
	void *out = tobuf(L, 5, 0, 0);
	struct capture cap;

	/* libbcc complains on stderr; the caller reports the failure */
	capture_begin(&cap);
	rc = is_key ? bpf_table_key_sscanf(m->mod, id, text, out) : bpf_table_leaf_sscanf(m->mod, id, text, out);
	capture_drop(&cap);
	if (rc != 0)
		return dn_vm_fail(L, EINVAL, "cannot read '%s' as a %s of this table", text, is_key ? "key" : "leaf");
	lua_pushboolean(L, 1);
	return 1;
}

/* core.map_lookup(fd, key, leaf_out) -> true | false (absent) | nil, msg, errno */
static int l_map_lookup(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	void *k = tobuf(L, 2, 0, 1), *v = tobuf(L, 3, 0, 0);

	if (bpf_lookup_elem(fd, k, v) == 0) {
		lua_pushboolean(L, 1);
		return 1;
	}
	if (errno == ENOENT) {
		lua_pushboolean(L, 0);
		return 1;
	}
	return dn_vm_fail(L, errno, "map lookup failed: %s", strerror(errno));
}

/* core.map_update(fd, key, leaf, flags) -> true | nil, msg, errno */
static int l_map_update(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	void *k = tobuf(L, 2, 0, 1), *v = tobuf(L, 3, 0, 1);
	unsigned long long flags = (unsigned long long)luaL_optinteger(L, 4, 0);

	if (bpf_update_elem(fd, k, v, flags) == 0) {
		lua_pushboolean(L, 1);
		return 1;
	}
	return dn_vm_fail(L, errno, "map update failed: %s", strerror(errno));
}

/* core.map_delete(fd, key) -> true | false (absent) | nil, msg, errno */
static int l_map_delete(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	void *k = tobuf(L, 2, 0, 1);

	if (bpf_delete_elem(fd, k) == 0) {
		lua_pushboolean(L, 1);
		return 1;
	}
	if (errno == ENOENT) {
		lua_pushboolean(L, 0);
		return 1;
	}
	return dn_vm_fail(L, errno, "map delete failed: %s", strerror(errno));
}

/* Keys and leaves of a map, packed, as map_dump collects them. */
struct dump {
	char *keys, *leaves;
	size_t n, cap, ks, ls;
};

/* Room for `need` entries in all; 0 or -ENOMEM. */
static int dump_reserve(struct dump *d, size_t need)
{
	size_t nc = d->cap ? d->cap : 64;
	char *nk, *nl;

	if (need <= d->cap)
		return 0;
	while (nc < need)
		nc *= 2;
	nk = realloc(d->keys, nc * d->ks);
	if (!nk)
		return -ENOMEM;
	d->keys = nk;
	nl = realloc(d->leaves, nc * d->ls);
	if (!nl)
		return -ENOMEM;
	d->leaves = nl;
	d->cap = nc;
	return 0;
}

/* Whole chunks per syscall (BPF_MAP_LOOKUP_BATCH, hash maps). 0 when
 * done, 1 when the map does not support it (nothing read), or -errno. */
static int dump_batch(int fd, struct dump *d, size_t max)
{
	size_t chunk = max < 1024 ? max : 1024, tok = d->ks > 8 ? d->ks : 8;
	char *tok_in = malloc(tok), *tok_out = malloc(tok);
	int first = 1, rc = 0;

	if (!tok_in || !tok_out || chunk == 0)
		rc = chunk == 0 ? 0 : -ENOMEM;
	while (rc == 0 && tok_in && tok_out && chunk > 0 && d->n < max) {
		__u32 count = (__u32)chunk;
		int r;

		if ((rc = dump_reserve(d, d->n + chunk)) != 0)
			break;
		r = bpf_lookup_batch(fd, first ? NULL : (__u32 *)tok_in, (__u32 *)tok_out, d->keys + d->n * d->ks,
		                     d->leaves + d->n * d->ls, &count);
		if (r != 0 && errno != ENOENT) {
			rc = first ? 1 : -errno;
			break;
		}
		d->n += count;
		if (r != 0)
			break; /* ENOENT: that was the last chunk */
		memcpy(tok_in, tok_out, tok);
		first = 0;
	}
	free(tok_in);
	free(tok_out);
	return rc;
}

/* Key by key. max bounds the walk: a hash map whose entries are deleted
 * while we walk restarts from its first key. 0 or -errno. */
static int dump_walk(int fd, struct dump *d, size_t max)
{
	char *cur = malloc(d->ks), *prev = malloc(d->ks);
	int have_prev = 0, rc = 0;

	if (!cur || !prev)
		rc = -ENOMEM;
	while (rc == 0 && d->n < max) {
		if (bpf_get_next_key(fd, have_prev ? prev : NULL, cur) != 0) {
			if (errno != ENOENT)
				rc = -errno;
			break;
		}
		memcpy(prev, cur, d->ks);
		have_prev = 1;
		if ((rc = dump_reserve(d, d->n + 1)) != 0)
			break;
		if (bpf_lookup_elem(fd, cur, d->leaves + d->n * d->ls) == 0) {
			memcpy(d->keys + d->n * d->ks, cur, d->ks);
			d->n++;
		}
	}
	free(cur);
	free(prev);
	return rc;
}

/* batch lookups allowed (core.map_batch(false) for kernels said to lack
 * them, DENET_DISABLE=batch) */
static int batch_on = 1;

/* core.map_batch(bool): read maps in batches where the kernel can */
static int l_map_batch(lua_State *L)
{
	batch_on = lua_toboolean(L, 1);
	return 0;
}

/* core.map_dump(fd, key_size, leaf_size [, max]) -> keys, leaves, n
 * All entries in one call: keys and leaves packed into two strings. For
 * per-CPU maps leaf_size is the whole per-CPU value. Hash maps are read
 * in batches; other maps (and old kernels) key by key. */
static int l_map_dump(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	struct dump d = { NULL, NULL, 0, 0, (size_t)luaL_checkinteger(L, 2), (size_t)luaL_checkinteger(L, 3) };
	size_t max = (size_t)luaL_optinteger(L, 4, 1 << 20);
	int rc = batch_on ? dump_batch(fd, &d, max) : 1;

	if (rc == 1) {
		d.n = 0;
		rc = dump_walk(fd, &d, max);
	}
	if (rc < 0) {
		free(d.keys);
		free(d.leaves);
		return dn_vm_fail(L, -rc, "map iteration failed: %s", strerror(-rc));
	}
	lua_pushlstring(L, d.keys ? d.keys : "", d.n * d.ks);
	lua_pushlstring(L, d.leaves ? d.leaves : "", d.n * d.ls);
	lua_pushinteger(L, (lua_Integer)d.n);
	free(d.keys);
	free(d.leaves);
	return 3;
}

/* core.map_clear(fd, key_size) -> deleted count | nil, msg, errno.
 * Arrays cannot delete: their leaves are zeroed by the Lua side. */
static int l_map_clear(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	size_t ks = (size_t)luaL_checkinteger(L, 2);
	char *k = malloc(ks);
	lua_Integer n = 0;

	if (!k)
		return luaL_error(L, "out of memory");
	while (bpf_get_next_key(fd, NULL, k) == 0) {
		if (bpf_delete_elem(fd, k) != 0) {
			int err = errno;

			free(k);
			return dn_vm_fail(L, err, "map delete failed: %s", strerror(err));
		}
		n++;
	}
	free(k);
	lua_pushinteger(L, n);
	return 1;
}

/* core.map_create(type, name, key_size, leaf_size, max_entries, flags)
 * -> fd | nil, msg, errno (used by doctor's probes) */
static int l_map_create(lua_State *L)
{
	int type = (int)luaL_checkinteger(L, 1);
	const char *name = luaL_checkstring(L, 2);
	int ks = (int)luaL_checkinteger(L, 3), ls = (int)luaL_checkinteger(L, 4);
	int max = (int)luaL_checkinteger(L, 5), flags = (int)luaL_optinteger(L, 6, 0);
	struct bcc_create_map_attr attr;
	int fd;

	memset(&attr, 0, sizeof(attr));
	attr.name = name;
	attr.map_type = type;
	attr.key_size = (unsigned)ks;
	attr.value_size = (unsigned)ls;
	attr.max_entries = (unsigned)max;
	attr.map_flags = (unsigned)flags;
	fd = bcc_create_map_xattr(&attr, false);
	if (fd < 0)
		return dn_vm_fail(L, errno, "map create failed: %s", strerror(errno));
	lua_pushinteger(L, fd);
	return 1;
}

static int l_close_fd(lua_State *L)
{
	close((int)luaL_checkinteger(L, 1));
	return 0;
}

void dn_bcc_open(lua_State *L)
{
	/* clang-format off */
	static const luaL_Reg methods[] = {
		{ "close", l_module_close },
		{ "functions", l_module_functions },
		{ "load", l_module_load },
		{ "attach_tracepoint", l_attach_tracepoint },
		{ "attach_raw_tracepoint", l_attach_raw_tracepoint },
		{ "attach_uprobe", l_attach_uprobe },
		{ "attach_kprobe", l_attach_kprobe },
		{ "attach_perf_event", l_attach_perf_event },
		{ "attach_kfunc", l_attach_kfunc },
		{ "detach", l_module_detach },
		{ "attachments", l_module_attachments },
		{ "tables", l_module_tables },
		{ "table_info", l_module_table_info },
		{ "function_code", l_module_function_code },
		{ "table_print", l_module_table_print },
		{ "table_scan", l_module_table_scan },
		{ NULL, NULL },
	};
	/* clang-format on */
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "bpf_compile", l_bpf_compile },
		{ "map_lookup", l_map_lookup },
		{ "map_update", l_map_update },
		{ "map_delete", l_map_delete },
		{ "map_dump", l_map_dump },
		{ "map_batch", l_map_batch },
		{ "map_clear", l_map_clear },
		{ "map_create", l_map_create },
		{ "close_fd", l_close_fd },
		{ NULL, NULL },
	};
	/* clang-format on */
	dn_vm_newclass(L, MODULE_MT, module_gc, methods);
	dn_vm_setfuncs(L, fns);
}
