/* leak_canary: a host function called from Lua leaks 4321 bytes, and
 * LeakSanitizer, with the suite's own suppressions (tests/lsan.supp), must
 * report it. Proves the suppressions name third-party leaks only: a rule
 * that matched any stack through LuaJIT would hide every leak of the
 * host's Lua functions. Built and run in the sanitizer build only. */
#include <stdlib.h>
#include <string.h>

#include "dn.h"

static int leaky(lua_State *L)
{
	char *volatile p = malloc(4321);

	(void)L;
	if (p)
		memset(p, 1, 4321);
	return 0; /* p is lost here */
}

int main(void)
{
	lua_State *L = dn_vm_new();

	if (!L)
		return 2;
	lua_pushcfunction(L, leaky);
	lua_setglobal(L, "leaky");
	if (luaL_dostring(L, "leaky()") != 0)
		return 3;
	/* as denet: the state is not closed at exit */
	return 0;
}
