/* fuzz_lua: denet's Lua parsers, on the host itself. FUZZ_LUA_TARGET (a
 * compile-time name) picks a function of tests/fuzz/targets.lua, which is
 * called with the input as a string. A user error (denet's one-line
 * refusal) is a fine answer to bad input; any other Lua error, or a
 * violated invariant (the targets raise), is a crash. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "dn.h"
#include <lualib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static lua_State *L;
static int target_ref;

static void setup(void)
{
	L = dn_vm_new();
	if (!L || luaL_loadfile(L, FUZZ_DIR "/targets.lua") != 0 || lua_pcall(L, 0, 1, 0) != 0) {
		fprintf(stderr, "fuzz_lua: %s\n", L ? lua_tostring(L, -1) : "no Lua state");
		abort();
	}
	lua_getfield(L, -1, FUZZ_LUA_TARGET);
	if (!lua_isfunction(L, -1)) {
		fprintf(stderr, "fuzz_lua: no target %s in targets.lua\n", FUZZ_LUA_TARGET);
		abort();
	}
	target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pop(L, 1);
}

/* Before the first input: the state, and one empty input, so modules
 * load and their lifetime buffers (lua-cjson's) exist before any input is
 * judged for leaks. lua-cjson is opened by its path first: denet loads
 * native modules through the descriptor it checked (/proc/self/fd/N),
 * which the symbolizer cannot read once closed, and the suppression of
 * its buffer (tests/lsan.supp) needs the function's name. dlopen finds
 * the same file already loaded and keeps this name. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	lua_State *plain = luaL_newstate();

	luaL_openlibs(plain);
	if (luaL_dostring(plain, "return package.searchpath('cjson', package.cpath)") == 0 && lua_isstring(plain, -1))
		dlopen(lua_tostring(plain, -1), RTLD_NOW | RTLD_GLOBAL);
	lua_close(plain);
	setup();
	LLVMFuzzerTestOneInput((const uint8_t *)"", 0);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!L)
		setup();
	lua_rawgeti(L, LUA_REGISTRYINDEX, target_ref);
	lua_pushlstring(L, (const char *)data, size);
	if (lua_pcall(L, 1, 0, 0) != 0) {
		int user = 0;

		if (lua_istable(L, -1)) {
			lua_getfield(L, -1, "denet_error");
			user = lua_toboolean(L, -1);
			lua_pop(L, 1);
		}
		if (!user) {
			const char *msg = lua_tostring(L, -1);

			fprintf(stderr, "fuzz_lua %s: %s\n", FUZZ_LUA_TARGET, msg ? msg : "(an error object)");
			abort();
		}
		lua_pop(L, 1);
	}
	lua_gc(L, LUA_GCSTEP, 0);
	return 0;
}
