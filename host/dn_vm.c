/*
 * dn_vm.c - the Lua state: creation, search paths, protected calls and the
 * way errors reach the user.
 *
 * Depends on LuaJIT's C API, on dn_config.h for where the Lua library
 * lives and on dn_trust.c for how files are loaded. Every call from C into Lua goes through dn_vm_pcall(), which adds
 * a traceback to script bugs; errors that are meant for users (tables
 * built by lib/denet/errors.lua, field `denet_error`) pass through intact so
 * dn_vm_report() can print them as one line and use their exit code.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <lualib.h>

#include "dn.h"
#include "dn_config.h"

static char dn_root[PATH_MAX];

static int dir_has(const char *dir, const char *rel)
{
	char p[PATH_MAX];
	struct stat st;

	if (snprintf(p, sizeof(p), "%s/%s", dir, rel) >= (int)sizeof(p))
		return 0;
	return stat(p, &st) == 0;
}

/* An installed denet finds its data next to its own bin/ directory (so an
 * installed tree can be moved); a denet run from its build directory uses
 * the source tree it was configured from. */
const char *dn_vm_root(void)
{
	char exe[PATH_MAX], cand[PATH_MAX];
	ssize_t n;
	char *slash;

	if (dn_root[0])
		return dn_root;
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		slash = strrchr(exe, '/');
		if (slash) {
			*slash = '\0';
			if (snprintf(cand, sizeof(cand), "%s/../share/denet", exe) < (int)sizeof(cand) &&
			    dir_has(cand, "lib/denet/init.lua") && realpath(cand, dn_root))
				return dn_root;
		}
	}
	if (dir_has(DN_SOURCE_DIR, "lib/denet/init.lua"))
		snprintf(dn_root, sizeof(dn_root), "%s", DN_SOURCE_DIR);
	else
		snprintf(dn_root, sizeof(dn_root), "%s", DN_DATADIR);
	return dn_root;
}

/* tostring(err): "where: message" (where is the file:line of the user's
 * script that made the failing call, when there is one). */
static int user_error_tostring(lua_State *L)
{
	lua_getfield(L, 1, "message");
	if (!lua_isstring(L, -1)) {
		lua_pop(L, 1);
		lua_pushliteral(L, "error");
	}
	lua_getfield(L, 1, "where");
	if (lua_isstring(L, -1) && lua_objlen(L, -1) > 0) {
		lua_pushliteral(L, ": ");
		lua_pushvalue(L, -3);
		lua_concat(L, 3);
		return 1;
	}
	lua_pop(L, 1);
	return 1;
}

/* a .. b where either is an error: both as text */
static int user_error_concat(lua_State *L)
{
	int i;

	for (i = 1; i <= 2; i++) {
		if (!lua_isstring(L, i)) {
			if (!luaL_callmeta(L, i, "__tostring"))
				return luaL_error(L, "attempt to concatenate a %s value", luaL_typename(L, i));
			lua_replace(L, i);
		}
	}
	lua_concat(L, 2);
	return 1;
}

/* err:method(...) for every string method, applied to tostring(err) */
static int user_error_strcall(lua_State *L)
{
	int n = lua_gettop(L);

	if (luaL_callmeta(L, 1, "__tostring"))
		lua_replace(L, 1);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, n, LUA_MULTRET);
	return lua_gettop(L);
}

static int user_error_index(lua_State *L)
{
	/* stack: err, key */
	lua_getglobal(L, "string");
	if (lua_istable(L, -1)) {
		lua_pushvalue(L, 2);
		lua_rawget(L, -2);
		if (lua_isfunction(L, -1)) {
			lua_pushcclosure(L, user_error_strcall, 1);
			return 1;
		}
	}
	lua_pushnil(L);
	return 1;
}

void dn_vm_user_error(lua_State *L, const char *message, int code)
{
	lua_createtable(L, 0, 4);
	lua_pushboolean(L, 1);
	lua_setfield(L, -2, "denet_error");
	lua_pushstring(L, message);
	lua_setfield(L, -2, "message");
	lua_pushinteger(L, code);
	lua_setfield(L, -2, "code");
	if (luaL_newmetatable(L, "denet.UserError")) {
		lua_pushcfunction(L, user_error_tostring);
		lua_setfield(L, -2, "__tostring");
		lua_pushcfunction(L, user_error_concat);
		lua_setfield(L, -2, "__concat");
		lua_pushcfunction(L, user_error_index);
		lua_setfield(L, -2, "__index");
	}
	lua_setmetatable(L, -2);
}

/* core.user_error(message, code) -> the error value (see dn_vm_user_error) */
static int l_user_error(lua_State *L)
{
	dn_vm_user_error(L, luaL_checkstring(L, 1), (int)luaL_optinteger(L, 2, 2));
	return 1;
}

static int core_open(lua_State *L)
{
	lua_newtable(L);
	dn_bcc_open(L);
	dn_loop_open(L);
	dn_proc_open(L);
	dn_procfs_open(L);
	dn_sym_open(L);
	dn_unwind_open(L);
	dn_sys_open(L);
	dn_repl_open(L);
	dn_trust_open_lua(L);
	dn_feat_open(L);
	dn_json_open(L);
	dn_usdt_open(L);
	dn_http_open(L);
	dn_pprof_open(L);
	dn_records_open(L);
	lua_pushcfunction(L, l_user_error);
	lua_setfield(L, -2, "user_error");
	lua_pushstring(L, dn_vm_root());
	lua_setfield(L, -2, "root");
	lua_pushstring(L, DN_VERSION);
	lua_setfield(L, -2, "version");
	return 1;
}

/* os.exit(code): release probes and buffers while the Lua state is still
 * valid, then exit without lua_close (LuaJIT's os.exit(code, true) would
 * free the state under the cleanup handlers). */
static int os_exit(lua_State *L)
{
	int code;

	if (lua_isboolean(L, 1))
		code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
	else
		code = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
	fflush(NULL);
	dn_cleanup_run();
	exit(code);
	return 0;
}

lua_State *dn_vm_new(void)
{
	/* luaL_newstate, not lua_newstate: LuaJIT on x86_64 needs its own
	 * allocator. */
	lua_State *L = luaL_newstate();
	const char *root = dn_vm_root();

	if (!L)
		return NULL;
	luaL_openlibs(L);
	lua_getglobal(L, "os");
	lua_pushcfunction(L, os_exit);
	lua_setfield(L, -2, "exit");
	lua_pop(L, 1);

	/* stack: package */
	lua_getglobal(L, "package");
	lua_pushfstring(L, "%s/lib/?.lua;%s/lib/?/init.lua;", root, root);
	lua_getfield(L, -2, "path");
	lua_concat(L, 2);
	lua_setfield(L, -2, "path");
	/* stack: package, preload */
	lua_getfield(L, -1, "preload");
	lua_pushcfunction(L, core_open);
	lua_setfield(L, -2, "denet.core");
	lua_pop(L, 2);
	/* no relative search entries; every file loaded through the check */
	dn_trust_install(L);
	return L;
}

static int traceback(lua_State *L)
{
	/* User errors are tables: keep them as they are. */
	if (lua_type(L, 1) == LUA_TTABLE)
		return 1;
	if (!lua_isstring(L, 1)) {
		if (luaL_callmeta(L, 1, "__tostring") && lua_isstring(L, -1))
			lua_replace(L, 1);
		else
			lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	}
	luaL_traceback(L, L, lua_tostring(L, 1), 1);
	return 1;
}

int dn_vm_pcall(lua_State *L, int nargs, int nresults)
{
	int base = lua_gettop(L) - nargs;
	int rc;

	lua_pushcfunction(L, traceback);
	lua_insert(L, base);
	rc = lua_pcall(L, nargs, nresults, base);
	lua_remove(L, base);
	return rc;
}

int dn_vm_report(lua_State *L)
{
	int code = 1, plain, quiet;

	if (lua_type(L, -1) == LUA_TTABLE) {
		/* stack: err */
		lua_getfield(L, -1, "code");
		if (lua_isnumber(L, -1))
			code = (int)lua_tointeger(L, -1);
		lua_pop(L, 1);
		lua_getfield(L, -1, "plain");
		plain = lua_toboolean(L, -1);
		lua_pop(L, 1);
		/* Ctrl-C is no failure to explain */
		lua_getfield(L, -1, "interrupted");
		quiet = lua_toboolean(L, -1);
		lua_pop(L, 1);
		/* script errors already start with their file:line */
		if (!quiet && luaL_callmeta(L, -1, "__tostring")) {
			if (lua_isstring(L, -1) && lua_objlen(L, -1) > 0)
				fprintf(stderr, "%s%s\n", plain ? "" : "denet: ", lua_tostring(L, -1));
			lua_pop(L, 1);
		} else if (!quiet) {
			lua_getfield(L, -1, "message");
			if (lua_isstring(L, -1) && lua_objlen(L, -1) > 0)
				fprintf(stderr, "%s%s\n", plain ? "" : "denet: ", lua_tostring(L, -1));
			lua_pop(L, 1);
		}
		lua_pop(L, 1);
		return code;
	}
	fprintf(stderr, "%s\n", lua_isstring(L, -1) ? lua_tostring(L, -1) : "(error without message)");
	lua_pop(L, 1);
	return code;
}

int dn_vm_fail(lua_State *L, int err, const char *fmt, ...)
{
	char buf[DN_ERRBUF];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	lua_pushnil(L);
	lua_pushstring(L, buf);
	lua_pushinteger(L, err);
	return 3;
}

uint64_t dn_vm_checku64(lua_State *L, int idx)
{
	/* LuaJIT's type tag for cdata (lua.h does not name it); the Lua side
	 * passes only uint64_t/int64_t cdata here */
	if (lua_type(L, idx) == 10)
		return *(const uint64_t *)lua_topointer(L, idx);
	return (uint64_t)luaL_checknumber(L, idx);
}

void dn_vm_setfuncs(lua_State *L, const luaL_Reg *fns)
{
	for (; fns->name; fns++) {
		lua_pushcfunction(L, fns->func);
		lua_setfield(L, -2, fns->name);
	}
}

void dn_vm_newclass(lua_State *L, const char *name, lua_CFunction gc, const luaL_Reg *methods)
{
	if (luaL_newmetatable(L, name)) {
		lua_pushcfunction(L, gc);
		lua_setfield(L, -2, "__gc");
		lua_newtable(L);
		dn_vm_setfuncs(L, methods);
		lua_setfield(L, -2, "__index");
	}
	lua_pop(L, 1);
}
