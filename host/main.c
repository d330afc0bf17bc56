/*
 * main.c - the denet executable: create the Lua state and hand the command
 * line to lib/denet/cli.lua, which dispatches every subcommand.
 *
 * Exit codes: what the command chose; 1 for a script bug (file:line and a
 * traceback on stderr); 2 for an error a user can act on (one line);
 * 128+signal when interrupted. Every path ends through dn_cleanup_run(), so
 * attached probes, loaded programs and buffers are released.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dn.h"

/* --allow-untrusted anywhere before "--" holds for the whole run, from
 * the first module loaded on. */
static int allow_untrusted(int argc, char **argv)
{
	int i;

	for (i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
		if (strcmp(argv[i], "--allow-untrusted") == 0)
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	lua_State *L;
	int code, i;

	dn_trust_init(allow_untrusted(argc, argv));
	dn_proc_raise_nofile();
	L = dn_vm_new();

	if (!L) {
		fprintf(stderr, "denet: cannot create the Lua state: out of memory\n");
		return 2;
	}
	atexit(dn_cleanup_run);
	if (dn_loop_init(L) < 0) {
		fprintf(stderr, "denet: cannot set up the event loop (epoll/eventfd failed)\n");
		return 2;
	}

	/* stack: require */
	lua_getglobal(L, "require");
	lua_pushstring(L, "denet.cli");
	if (dn_vm_pcall(L, 1, 1) != 0) {
		code = dn_vm_report(L);
		/* a refusal (code 2) already said what is wrong, in one line */
		if (code != 2)
			fprintf(stderr, "denet: the Lua library under %s/lib is broken or missing\n", dn_vm_root());
		return code;
	}
	/* stack: cli -> cli.main, argv */
	lua_getfield(L, -1, "main");
	lua_remove(L, -2);
	lua_createtable(L, argc, 0);
	for (i = 0; i < argc; i++) {
		lua_pushstring(L, argv[i]);
		lua_rawseti(L, -2, i);
	}
	if (dn_vm_pcall(L, 1, 1) != 0) {
		code = dn_vm_report(L);
	} else {
		code = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : 0;
		lua_pop(L, 1);
	}
	fflush(stdout);
	dn_cleanup_run();
	return code;
}
