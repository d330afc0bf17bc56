/*
 * dn_usdt.c - USDT probes (DTRACE_PROBE / sys/sdt.h markers) from Lua,
 * through libbcc's bcc_usdt_* API.
 *
 * A context ("denet.usdt") reads the probe notes of a binary or of every
 * object a process maps. Enabling a probe names the BPF function to run
 * there; libbcc then generates the bpf_usdt_readarg() code for the enabled
 * probes' arguments (genargs, compiled with the program) and lists the
 * uprobes to attach (one per probe location). For a process, enabling a
 * probe that has a semaphore also raises the semaphore in its memory;
 * closing the context lowers it again, which is why contexts are on the
 * cleanup registry.
 *
 * Depends on libbcc (bcc_usdt.h) and dn_cleanup_* (dn_loop.c).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <bcc/bcc_usdt.h>

#include "dn.h"

#define USDT_MT "denet.usdt"

struct dn_usdt {
	void *ctx;
};

static void usdt_release(void *obj)
{
	struct dn_usdt *u = obj;

	if (u->ctx) {
		bcc_usdt_close(u->ctx);
		u->ctx = NULL;
	}
}

static struct dn_usdt *check_usdt(lua_State *L, int idx)
{
	struct dn_usdt *u = luaL_checkudata(L, idx, USDT_MT);

	if (!u->ctx)
		luaL_error(L, "USDT context is closed");
	return u;
}

/* core.usdt_open(pid, path) -> context | nil, msg, errno
 * pid > 0: the probes of that process (path: only that binary of it, or
 * nil for every object it maps); else the probes of the binary at path. */
static int l_usdt_open(lua_State *L)
{
	int pid = (int)luaL_optinteger(L, 1, -1);
	const char *path = luaL_optstring(L, 2, NULL);
	struct dn_usdt *u;
	void *ctx;

	if (pid <= 0 && !path)
		return luaL_error(L, "usdt_open: give a pid or a path");
	ctx = pid > 0 ? bcc_usdt_new_frompid(pid, path) : bcc_usdt_new_frompath(path);
	if (!ctx) {
		if (pid > 0)
			return dn_vm_fail(L, ESRCH,
			                  "cannot read the USDT probes of process %d%s%s (gone, or no "
			                  "access to its memory)",
			                  pid, path ? " in " : "", path ? path : "");
		return dn_vm_fail(L, ENOENT,
		                  "cannot read the USDT probes of %s (no such file, or not an ELF "
		                  "file)",
		                  path);
	}
	u = lua_newuserdata(L, sizeof(*u));
	u->ctx = ctx;
	luaL_getmetatable(L, USDT_MT);
	lua_setmetatable(L, -2);
	dn_cleanup_add(u, usdt_release);
	return 1;
}

/* u:enable_probe(probe, fn_name) -> true | nil, msg, errno
 * probe: "name" or "provider:name". */
static int l_usdt_enable(lua_State *L)
{
	struct dn_usdt *u = check_usdt(L, 1);
	const char *probe = luaL_checkstring(L, 2);
	const char *fn = luaL_checkstring(L, 3);
	const char *colon = strchr(probe, ':');
	int rc;

	if (colon) {
		char provider[256];
		size_t n = (size_t)(colon - probe);

		if (n >= sizeof(provider))
			return luaL_error(L, "USDT provider name too long");
		memcpy(provider, probe, n);
		provider[n] = '\0';
		rc = bcc_usdt_enable_fully_specified_probe(u->ctx, provider, colon + 1, fn);
	} else {
		rc = bcc_usdt_enable_probe(u->ctx, probe, fn);
	}
	if (rc != 0)
		return dn_vm_fail(L, ENOENT,
		                  "cannot enable USDT probe %s: no such probe, or its semaphore "
		                  "cannot be set (a path context cannot set semaphores: give a pid)",
		                  probe);
	lua_pushboolean(L, 1);
	return 1;
}

/* core.usdt_genargs({ u1, u2, ... }) -> C text | nil, msg: the argument
 * readers of every enabled probe, to put before the program's text. */
static int l_usdt_genargs(lua_State *L)
{
	int n, i;
	void **ctxs;
	const char *text;

	luaL_checktype(L, 1, LUA_TTABLE);
	n = (int)lua_objlen(L, 1);
	ctxs = calloc((size_t)n + 1, sizeof(*ctxs));
	if (!ctxs)
		return luaL_error(L, "out of memory");
	for (i = 0; i < n; i++) {
		lua_rawgeti(L, 1, i + 1);
		ctxs[i] = check_usdt(L, -1)->ctx;
		lua_pop(L, 1);
	}
	text = bcc_usdt_genargs(ctxs, n);
	free(ctxs);
	if (!text)
		return dn_vm_fail(L, EINVAL,
		                  "cannot generate the USDT argument readers (an argument of an "
		                  "enabled probe has a form libbcc does not know)");
	lua_pushstring(L, text);
	return 1;
}

/* libbcc's iteration callbacks take no user pointer: collect into the
 * table at this stack index of this state (single-threaded, not nested). */
static lua_State *collect_L;
static int collect_n;

static void collect_uprobe(const char *bin, const char *fn, uint64_t addr, int pid)
{
	lua_State *L = collect_L;

	lua_createtable(L, 0, 4);
	lua_pushstring(L, bin);
	lua_setfield(L, -2, "path");
	lua_pushstring(L, fn);
	lua_setfield(L, -2, "fn_name");
	lua_pushnumber(L, (lua_Number)addr);
	lua_setfield(L, -2, "addr");
	lua_pushinteger(L, pid);
	lua_setfield(L, -2, "pid");
	lua_rawseti(L, -2, ++collect_n);
}

/* u:uprobes() -> { { path, fn_name, addr (ELF address), pid }, ... }: one
 * per location of every enabled probe */
static int l_usdt_uprobes(lua_State *L)
{
	struct dn_usdt *u = check_usdt(L, 1);

	lua_newtable(L);
	collect_L = L;
	collect_n = 0;
	bcc_usdt_foreach_uprobe(u->ctx, collect_uprobe);
	collect_L = NULL;
	return 1;
}

static void collect_probe(struct bcc_usdt *p)
{
	lua_State *L = collect_L;

	lua_createtable(L, 0, 6);
	lua_pushstring(L, p->provider);
	lua_setfield(L, -2, "provider");
	lua_pushstring(L, p->name);
	lua_setfield(L, -2, "name");
	lua_pushstring(L, p->bin_path);
	lua_setfield(L, -2, "path");
	lua_pushnumber(L, (lua_Number)p->semaphore);
	lua_setfield(L, -2, "semaphore");
	lua_pushinteger(L, p->num_locations);
	lua_setfield(L, -2, "locations");
	lua_pushinteger(L, p->num_arguments);
	lua_setfield(L, -2, "arguments");
	lua_rawseti(L, -2, ++collect_n);
}

/* u:probes() -> { { provider, name, path, semaphore, locations, arguments }, ... } */
static int l_usdt_probes(lua_State *L)
{
	struct dn_usdt *u = check_usdt(L, 1);

	lua_newtable(L);
	collect_L = L;
	collect_n = 0;
	bcc_usdt_foreach(u->ctx, collect_probe);
	collect_L = NULL;
	return 1;
}

static int l_usdt_close(lua_State *L)
{
	struct dn_usdt *u = luaL_checkudata(L, 1, USDT_MT);

	if (u->ctx) {
		dn_cleanup_remove(u);
		usdt_release(u);
	}
	return 0;
}

void dn_usdt_open(lua_State *L)
{
	/* clang-format off */
	static const luaL_Reg methods[] = {
		{ "enable_probe", l_usdt_enable },
		{ "uprobes", l_usdt_uprobes },
		{ "probes", l_usdt_probes },
		{ "close", l_usdt_close },
		{ NULL, NULL },
	};
	/* clang-format on */
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "usdt_open", l_usdt_open },
		{ "usdt_genargs", l_usdt_genargs },
		{ NULL, NULL },
	};
	/* clang-format on */

	dn_vm_newclass(L, USDT_MT, l_usdt_close, methods);
	dn_vm_setfuncs(L, fns);
}
