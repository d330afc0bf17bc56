/*
 * dn_repl.c - line editing for `denet repl`: GNU readline through its
 * callback interface, so waiting for a key also watches the loop's signal
 * eventfd (Ctrl-C cancels the line being typed instead of killing denet),
 * history, and completion answered by a Lua function.
 *
 * core.readline(prompt) -> line | nil (end of input) | false (Ctrl-C)
 * core.set_completer(fn): fn(text, line, start) -> { candidates }
 * core.history_add(line), core.history_read(path), core.history_write(path)
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include "dn.h"

static char *line_got;
static int line_done;
static lua_State *complete_L;
static int complete_ref = LUA_NOREF;

static void on_line(char *line)
{
	line_got = line;
	line_done = 1;
	rl_callback_handler_remove();
}

static void drain_wakefd(void)
{
	uint64_t n;
	ssize_t r = read(dn_loop_wakefd(), &n, sizeof(n));

	(void)r;
}

static int l_readline(lua_State *L)
{
	const char *prompt = luaL_optstring(L, 1, "> ");
	struct pollfd fds[2];

	line_got = NULL;
	line_done = 0;
	rl_catch_signals = 0;
	rl_callback_handler_install(prompt, on_line);
	fds[0].fd = STDIN_FILENO;
	fds[0].events = POLLIN;
	fds[1].fd = dn_loop_wakefd();
	fds[1].events = POLLIN;
	while (!line_done) {
		int n = poll(fds, 2, -1);

		if (dn_loop_signal_pending) {
			int sig = dn_loop_signal_pending;

			dn_loop_signal_pending = 0;
			drain_wakefd();
			if (sig != SIGINT) {
				/* SIGTERM/SIGHUP: leave as at end of input */
				rl_callback_handler_remove();
				rl_deprep_terminal();
				lua_pushnil(L);
				return 1;
			}
			/* Ctrl-C: drop what was typed, a fresh prompt */
			rl_free_line_state();
			rl_callback_sigcleanup();
			rl_callback_handler_remove();
			rl_crlf();
			lua_pushboolean(L, 0);
			return 1;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rl_callback_handler_remove();
			return dn_vm_fail(L, errno, "poll: %s", strerror(errno));
		}
		if (fds[1].revents & POLLIN)
			drain_wakefd();
		if (fds[0].revents & (POLLIN | POLLHUP | POLLERR))
			rl_callback_read_char();
	}
	if (!line_got) {
		lua_pushnil(L);
		return 1;
	}
	lua_pushstring(L, line_got);
	free(line_got);
	return 1;
}

/* completion: the Lua completer's list, handed out one by one */
static char **cands;
static int ncands;

static char *generator(const char *text, int state)
{
	static int i;

	(void)text;
	if (state == 0)
		i = 0;
	if (i < ncands)
		return strdup(cands[i++]);
	return NULL;
}

static void free_cands(void)
{
	for (int i = 0; i < ncands; i++)
		free(cands[i]);
	free(cands);
	cands = NULL;
	ncands = 0;
}

static char **attempt(const char *text, int start, int end)
{
	lua_State *L = complete_L;

	(void)end;
	rl_attempted_completion_over = 1; /* no file names */
	free_cands();
	if (!L || complete_ref == LUA_NOREF)
		return NULL;
	lua_rawgeti(L, LUA_REGISTRYINDEX, complete_ref);
	lua_pushstring(L, text);
	lua_pushstring(L, rl_line_buffer);
	lua_pushinteger(L, start);
	if (lua_pcall(L, 3, 1, 0) != 0 || !lua_istable(L, -1)) {
		lua_pop(L, 1);
		return NULL;
	}
	int n = (int)lua_objlen(L, -1);
	cands = calloc(n > 0 ? n : 1, sizeof(char *));
	for (int i = 1; cands && i <= n; i++) {
		lua_rawgeti(L, -1, i);
		const char *s = lua_tostring(L, -1);
		if (s)
			cands[ncands++] = strdup(s);
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	if (ncands == 0)
		return NULL;
	return rl_completion_matches(text, generator);
}

static int l_set_completer(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TFUNCTION);
	if (complete_ref != LUA_NOREF)
		luaL_unref(L, LUA_REGISTRYINDEX, complete_ref);
	lua_pushvalue(L, 1);
	complete_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	complete_L = L;
	/* '.' and ':' stay in the word: denet.sp<TAB>, sched:sched_sw<TAB> */
	rl_completer_word_break_characters = " \t\n\"'`@$><=;|&{(,+-*/%^~#[]";
	rl_attempted_completion_function = attempt;
	return 0;
}

static int l_history_add(lua_State *L)
{
	add_history(luaL_checkstring(L, 1));
	return 0;
}

static int l_history_read(lua_State *L)
{
	lua_pushboolean(L, read_history(luaL_checkstring(L, 1)) == 0);
	return 1;
}

static int l_history_write(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	int keep = (int)luaL_optinteger(L, 2, 1000);

	stifle_history(keep);
	lua_pushboolean(L, write_history(path) == 0);
	return 1;
}

void dn_repl_open(lua_State *L)
{
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "readline", l_readline },
		{ "set_completer", l_set_completer },
		{ "history_add", l_history_add },
		{ "history_read", l_history_read },
		{ "history_write", l_history_write },
		{ NULL, NULL },
	};
	/* clang-format on */
	dn_vm_setfuncs(L, fns);
}
