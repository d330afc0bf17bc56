/*
 * dn_loop.c - the event loop C owns: BPF ring and perf buffers, timers,
 * readable fds (pidfds of children), and SIGINT/SIGTERM/SIGHUP, waited on
 * together with one epoll set. Also the process-wide cleanup registry.
 *
 * Depends on libbcc (ring buffer and perf reader), Linux epoll, timerfd and
 * eventfd. Lua callbacks are called from C with dn_vm_pcall, never handed to
 * libbcc as FFI callbacks. A callback's error stops the dispatch and is
 * raised again from core.loop_poll() once C is out of libbcc.
 *
 * Re-entry contract: a callback may wait (denet.sleep runs loop_poll
 * again, inside the first). While a source's callback runs, the source is
 * held: a nested poll never dispatches it again (a ring buffer is never
 * consumed from inside its own consumer). Its fds leave the epoll set
 * (EPOLL_CTL_MOD to no events) while held, except a perf reader's: a
 * perf event's poll clears the wakeup it reports, so a MOD would lose it;
 * a held perf reader that a nested poll finds ready is marked pending and
 * read again once its callback returns. What arrives for a held source
 * waits in the kernel's buffer, the timerfd or the fd, and is delivered
 * once the callback returns; a buffer that fills up meanwhile counts its
 * losses (perf: the kernel's lost records; ring: the program's failed
 * outputs).
 * Polls nest at most DN_LOOP_MAX_DEPTH deep. A source closed while any
 * poll runs is only marked dead (no more callbacks) and freed when the
 * outermost poll ends, so no frame of the loop holds freed memory.
 *
 * Signals: the handler records the signal and wakes epoll through an
 * eventfd. When no poll is in progress (Lua code is running) it also sets
 * a Lua hook that raises an interrupt error at the next instruction, so a
 * script stuck in Lua code still stops. A second signal arriving before
 * the first was handled, or after an interrupt error was raised, exits at
 * once (the kernel then closes every BPF fd, which detaches the programs).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

#include <bcc/libbpf.h>
#include <bcc/perf_reader.h>

#include "dn.h"

volatile sig_atomic_t dn_loop_signal_pending;
volatile sig_atomic_t dn_loop_signal_code;
/* polls in progress: > 0 while loop_poll waits or runs callbacks (nested
 * when a callback waits) */
static volatile sig_atomic_t in_poll;
/* > 0 while Lua code loops around loop_poll and takes signals from it */
static volatile sig_atomic_t defer_depth;
static lua_State *hook_L;
static int epfd = -1, wakefd = -1;

/* --- cleanup registry ----------------------------------------------------- */

struct cleanup_ent {
	void *obj;
	dn_cleanup_fn fn;
};
static struct cleanup_ent *cleanups;
static int ncleanups, ccleanups;

void dn_cleanup_add(void *obj, dn_cleanup_fn fn)
{
	if (ncleanups == ccleanups) {
		int nc = ccleanups ? ccleanups * 2 : 32;
		struct cleanup_ent *n = realloc(cleanups, sizeof(*n) * (size_t)nc);

		if (!n)
			abort(); /* cannot track it: better than leaking probes */
		cleanups = n;
		ccleanups = nc;
	}
	cleanups[ncleanups].obj = obj;
	cleanups[ncleanups].fn = fn;
	ncleanups++;
}

void dn_cleanup_remove(void *obj)
{
	int i;

	for (i = ncleanups - 1; i >= 0; i--)
		if (cleanups[i].obj == obj) {
			memmove(&cleanups[i], &cleanups[i + 1], sizeof(*cleanups) * (size_t)(ncleanups - i - 1));
			ncleanups--;
			return;
		}
}

void dn_cleanup_run(void)
{
	/* newest first: buffers before the modules that own their maps */
	while (ncleanups > 0) {
		struct cleanup_ent e = cleanups[--ncleanups];

		e.fn(e.obj);
	}
	dn_loop_shutdown();
}

/* --- signals ----------------------------------------------------------- */

/* Set once an interrupt error has been raised: the script is unwinding
 * (cleanup, on_end, outputs), and any further signal ends the process. */
static volatile sig_atomic_t interrupting;

static void push_interrupt(lua_State *L, int sig)
{
	/* a denet user error: no traceback, exit 128+sig, tostring "interrupted" */
	dn_vm_user_error(L, "interrupted", 128 + sig);
	lua_pushboolean(L, 1);
	lua_setfield(L, -2, "interrupted");
	lua_pushinteger(L, sig);
	lua_setfield(L, -2, "signal");
}

static void interrupt_hook(lua_State *L, lua_Debug *ar)
{
	int sig = dn_loop_signal_pending;

	(void)ar;
	lua_sethook(L, NULL, 0, 0);
	if (!sig || in_poll || defer_depth > 0)
		return; /* the loop took it, or will on its next round */
	dn_loop_signal_pending = 0;
	interrupting = sig;
	push_interrupt(L, sig);
	lua_error(L);
}

static void on_signal(int sig, siginfo_t *si, void *uc)
{
	uint64_t one = 1;
	ssize_t r;

	(void)uc;
	if (dn_loop_signal_pending || interrupting) {
		/* the previous one was never handled, or the script is already
		 * unwinding from one: stop now. The kernel closes every BPF fd,
		 * which unloads and detaches the programs; a command denet
		 * started gets SIGTERM (PR_SET_PDEATHSIG). */
		_exit(128 + sig);
	}
	dn_loop_signal_pending = sig;
	dn_loop_signal_code = si ? si->si_code : 0;
	if (wakefd >= 0)
		r = write(wakefd, &one, sizeof(one));
	(void)r;
	if (!in_poll && defer_depth == 0 && hook_L)
		lua_sethook(hook_L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* --- sources ------------------------------------------------------------ */

enum src_kind { SRC_RINGBUF, SRC_PERF, SRC_TIMER, SRC_FD };

struct source;
struct watch {
	struct source *src;
	struct perf_reader *reader; /* SRC_PERF: this CPU's reader */
	int fd;
	int cpu;     /* SRC_PERF: the CPU of reader */
	int pending; /* SRC_PERF: found ready while its source was held */
};

struct source {
	enum src_kind kind;
	int id;
	int cb_ref, lost_ref;
	uint64_t lost;
	struct ring_buffer *rb;
	struct watch *watches;
	int nwatches;
	int timerfd;
	int held; /* its callback is running (frames of the loop hold it) */
	int dead; /* closed while a poll ran: freed when the outermost ends */
};

static struct source **sources;
static int nsources; /* slots; ids are index+1 */
static lua_State *cb_L;
static int err_ref = LUA_NOREF;

static struct source *src_get(lua_State *L, int id)
{
	if (id < 1 || id > nsources || !sources[id - 1])
		luaL_error(L, "no loop source %d", id);
	return sources[id - 1];
}

static int src_add(struct source *s)
{
	int i;

	for (i = 0; i < nsources; i++)
		if (!sources[i])
			break;
	if (i == nsources) {
		struct source **n = realloc(sources, sizeof(*n) * (size_t)(nsources + 1));

		if (!n)
			return -1;
		sources = n;
		nsources++;
	}
	sources[i] = s;
	s->id = i + 1;
	return s->id;
}

static void src_free(struct source *s)
{
	int i;

	for (i = 0; i < s->nwatches; i++) {
		if (s->watches[i].fd >= 0)
			epoll_ctl(epfd, EPOLL_CTL_DEL, s->watches[i].fd, NULL);
		if (s->watches[i].reader)
			perf_reader_free(s->watches[i].reader);
	}
	if (s->rb)
		bpf_free_ringbuf(s->rb);
	if (s->timerfd >= 0)
		close(s->timerfd);
	if (cb_L) {
		luaL_unref(cb_L, LUA_REGISTRYINDEX, s->cb_ref);
		luaL_unref(cb_L, LUA_REGISTRYINDEX, s->lost_ref);
	}
	free(s->watches);
	sources[s->id - 1] = NULL;
	free(s);
}

/* Close a source. While any poll runs its memory stays until the
 * outermost poll ends, since a batch of events (or a callback of it, up
 * the C stack) may still point at it. */
static void src_close(struct source *s)
{
	int i;

	dn_cleanup_remove(s);
	if (!in_poll && !s->held) {
		src_free(s);
		return;
	}
	for (i = 0; i < s->nwatches; i++)
		if (s->watches[i].fd >= 0) {
			epoll_ctl(epfd, EPOLL_CTL_DEL, s->watches[i].fd, NULL);
			s->watches[i].fd = -1;
		}
	s->dead = 1;
}

static void src_release(void *obj)
{
	src_free(obj);
}

static struct source *src_new(lua_State *L, enum src_kind kind, int cb_idx, int nwatches)
{
	struct source *s = calloc(1, sizeof(*s));

	if (!s)
		luaL_error(L, "out of memory");
	s->kind = kind;
	s->timerfd = -1;
	s->lost_ref = LUA_NOREF;
	s->watches = calloc((size_t)nwatches, sizeof(*s->watches));
	if (!s->watches || src_add(s) < 0) {
		free(s->watches);
		free(s);
		luaL_error(L, "out of memory");
	}
	s->nwatches = nwatches;
	for (int i = 0; i < nwatches; i++) {
		s->watches[i].src = s;
		s->watches[i].fd = -1;
	}
	luaL_checktype(L, cb_idx, LUA_TFUNCTION);
	lua_pushvalue(L, cb_idx);
	s->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	cb_L = L;
	dn_cleanup_add(s, src_release);
	return s;
}

static int watch_fd(struct watch *w, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = w };

	w->fd = fd;
	return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* Call the callback stored at ref with nargs arguments already pushed.
 * Returns -1 when it raised (the error is kept for loop_poll). */
static int call_lua(lua_State *L, int ref, int nargs)
{
	if (err_ref != LUA_NOREF) {
		lua_pop(L, nargs);
		return -1; /* an earlier callback failed: stop calling Lua */
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
	lua_insert(L, -nargs - 1);
	if (dn_vm_pcall(L, nargs, 0) != 0) {
		err_ref = luaL_ref(L, LUA_REGISTRYINDEX);
		return -1;
	}
	return 0;
}

static int ringbuf_sample(void *ctx, void *data, size_t size)
{
	struct source *s = ctx;

	if (s->dead)
		return -1; /* closed by a callback: stop consuming it */
	lua_pushlightuserdata(cb_L, data);
	lua_pushinteger(cb_L, (lua_Integer)size);
	return call_lua(cb_L, s->cb_ref, 2);
}

/* perf readers' context is their watch: the callback learns the CPU */
static void perf_sample(void *ctx, void *data, int size)
{
	struct watch *w = ctx;

	if (w->src->dead)
		return; /* closed by a callback: what is left is not delivered */
	lua_pushlightuserdata(cb_L, data);
	lua_pushinteger(cb_L, size);
	lua_pushinteger(cb_L, w->cpu);
	call_lua(cb_L, w->src->cb_ref, 3);
}

static void perf_lost(void *ctx, uint64_t lost)
{
	struct watch *w = ctx;
	struct source *s = w->src;

	s->lost += lost;
	if (s->lost_ref != LUA_NOREF && !s->dead) {
		lua_pushnumber(cb_L, (lua_Number)lost);
		lua_pushinteger(cb_L, w->cpu);
		call_lua(cb_L, s->lost_ref, 2);
	}
}

/* core.loop_ringbuf(map_fd, cb) -> id. cb(ptr, size) per record. */
static int l_loop_ringbuf(lua_State *L)
{
	int map_fd = (int)luaL_checkinteger(L, 1);
	struct source *s = src_new(L, SRC_RINGBUF, 2, 1);

	s->rb = bpf_new_ringbuf(map_fd, ringbuf_sample, s);
	if (!s->rb) {
		int err = errno;

		dn_cleanup_remove(s);
		src_free(s);
		return dn_vm_fail(L, err, "cannot open the ring buffer: %s", strerror(err));
	}
	/* A ring buffer map fd is itself pollable. */
	if (watch_fd(&s->watches[0], map_fd) < 0) {
		int err = errno;

		s->watches[0].fd = -1;
		dn_cleanup_remove(s);
		src_free(s);
		return dn_vm_fail(L, err, "cannot poll the ring buffer: %s", strerror(err));
	}
	lua_pushinteger(L, s->id);
	return 1;
}

/* core.loop_perfbuf(map_fd, cpus{}, page_cnt, cb, lost_cb|nil) -> id.
 * One reader per CPU, stored into the perf event array at its CPU index.
 * cb(ptr, size, cpu) per record, lost_cb(n, cpu) per loss report. */
static int l_loop_perfbuf(lua_State *L)
{
	int map_fd = (int)luaL_checkinteger(L, 1);
	int ncpu, page_cnt = (int)luaL_checkinteger(L, 3), i;
	struct source *s;

	luaL_checktype(L, 2, LUA_TTABLE);
	ncpu = (int)lua_objlen(L, 2);
	s = src_new(L, SRC_PERF, 4, ncpu);
	if (!lua_isnoneornil(L, 5)) {
		luaL_checktype(L, 5, LUA_TFUNCTION);
		lua_pushvalue(L, 5);
		s->lost_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	}
	for (i = 0; i < ncpu; i++) {
		int cpu, fd;
		struct perf_reader *r;

		lua_rawgeti(L, 2, i + 1);
		cpu = (int)lua_tointeger(L, -1);
		lua_pop(L, 1);
		s->watches[i].cpu = cpu;
		r = bpf_open_perf_buffer(perf_sample, perf_lost, &s->watches[i], -1, cpu, page_cnt);
		if (!r) {
			int err = errno ? errno : EINVAL;

			dn_cleanup_remove(s);
			src_free(s);
			return dn_vm_fail(L, err, "cannot open a perf buffer on cpu %d: %s", cpu, strerror(err));
		}
		s->watches[i].reader = r;
		fd = perf_reader_fd(r);
		if (bpf_update_elem(map_fd, &cpu, &fd, 0) != 0 || watch_fd(&s->watches[i], fd) < 0) {
			int err = errno;

			dn_cleanup_remove(s);
			src_free(s);
			return dn_vm_fail(L, err, "cannot register the perf buffer of cpu %d: %s", cpu, strerror(err));
		}
	}
	lua_pushinteger(L, s->id);
	return 1;
}

static uint64_t ts_ns(const struct timespec *t)
{
	return (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_nsec;
}

static struct timespec ns_ts(uint64_t ns)
{
	struct timespec t = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };
	return t;
}

/* core.loop_timer(first_s, interval_s, cb) -> id. cb(expirations).
 * Absolute CLOCK_MONOTONIC deadlines: ticks do not drift with callback
 * time. interval_s 0 makes a one-shot timer. */
static int l_loop_timer(lua_State *L)
{
	double first = luaL_checknumber(L, 1), every = luaL_checknumber(L, 2);
	struct itimerspec its;
	struct timespec now;
	struct source *s;
	int fd;

	if (first < 0 || every < 0)
		return luaL_error(L, "timer times must not be negative");
	s = src_new(L, SRC_TIMER, 3, 1);
	fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (fd < 0) {
		int err = errno;

		dn_cleanup_remove(s);
		src_free(s);
		return dn_vm_fail(L, err, "timerfd_create: %s", strerror(err));
	}
	s->timerfd = fd;
	clock_gettime(CLOCK_MONOTONIC, &now);
	its.it_value = ns_ts(ts_ns(&now) + (uint64_t)(first * 1e9) + (first == 0));
	its.it_interval = ns_ts((uint64_t)(every * 1e9));
	if (timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) < 0 || watch_fd(&s->watches[0], fd) < 0) {
		int err = errno;

		dn_cleanup_remove(s);
		src_free(s);
		return dn_vm_fail(L, err, "cannot arm the timer: %s", strerror(err));
	}
	lua_pushinteger(L, s->id);
	return 1;
}

/* core.loop_timer_at(id, deadline_s, interval_s): re-arm a timer to fire
 * at an absolute CLOCK_MONOTONIC time (seconds, as core.monotonic gives),
 * then every interval_s (0: once). Cheaper than a new timer per tick. */
static int l_loop_timer_at(lua_State *L)
{
	struct source *s = src_get(L, (int)luaL_checkinteger(L, 1));
	double at = luaL_checknumber(L, 2), every = luaL_optnumber(L, 3, 0);
	struct itimerspec its;

	if (s->kind != SRC_TIMER)
		return luaL_error(L, "loop source %d is not a timer", s->id);
	if (at <= 0)
		at = 1e-9;
	its.it_value = ns_ts((uint64_t)(at * 1e9));
	its.it_interval = ns_ts((uint64_t)(every * 1e9));
	if (timerfd_settime(s->timerfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
		return dn_vm_fail(L, errno, "cannot arm the timer: %s", strerror(errno));
	lua_pushboolean(L, 1);
	return 1;
}

/* core.loop_fd(fd, cb) -> id. cb() whenever fd is readable (level
 * triggered: the callback must consume or close the source). */
static int l_loop_fd(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	struct source *s = src_new(L, SRC_FD, 2, 1);

	if (watch_fd(&s->watches[0], fd) < 0) {
		int err = errno;

		s->watches[0].fd = -1;
		dn_cleanup_remove(s);
		src_free(s);
		return dn_vm_fail(L, err, "cannot watch fd %d: %s", fd, strerror(err));
	}
	lua_pushinteger(L, s->id);
	return 1;
}

/* core.loop_close(id): remove a source; closing twice is harmless. */
static int l_loop_close(lua_State *L)
{
	int id = (int)luaL_checkinteger(L, 1);

	if (id >= 1 && id <= nsources && sources[id - 1] && !sources[id - 1]->dead)
		src_close(sources[id - 1]);
	return 0;
}

/* core.loop_lost(id) -> records lost so far (perf buffers) */
static int l_loop_lost(lua_State *L)
{
	struct source *s = src_get(L, (int)luaL_checkinteger(L, 1));

	lua_pushnumber(L, (lua_Number)s->lost);
	return 1;
}

/* Take a source's fds out of the epoll set while its callback runs (on),
 * and put them back after (off): a nested poll does not see it. */
static void src_hold(struct source *s, int on)
{
	int i;

	if (s->kind == SRC_PERF)
		return; /* (a MOD would take the wakeup it has; see above) */
	for (i = 0; i < s->nwatches; i++)
		if (s->watches[i].fd >= 0) {
			struct epoll_event ev = { .events = on ? 0 : EPOLLIN, .data.ptr = &s->watches[i] };

			epoll_ctl(epfd, EPOLL_CTL_MOD, s->watches[i].fd, &ev);
		}
}

static void dispatch(struct watch *w)
{
	struct source *s = w->src;
	uint64_t exp;

	if (s->held++ == 0)
		src_hold(s, 1);
	switch (s->kind) {
	case SRC_RINGBUF:
		bpf_consume_ringbuf(s->rb);
		break;
	case SRC_PERF: {
		int i, again;

		perf_reader_event_read(w->reader);
		/* readers a nested poll found ready meanwhile */
		do {
			again = 0;
			for (i = 0; i < s->nwatches && !s->dead; i++)
				if (s->watches[i].pending) {
					s->watches[i].pending = 0;
					again = 1;
					perf_reader_event_read(s->watches[i].reader);
				}
		} while (again && !s->dead);
		break;
	}
	case SRC_TIMER:
		if (read(s->timerfd, &exp, sizeof(exp)) == sizeof(exp)) {
			lua_pushnumber(cb_L, (lua_Number)exp);
			call_lua(cb_L, s->cb_ref, 1);
		}
		break;
	case SRC_FD:
		call_lua(cb_L, s->cb_ref, 0);
		break;
	}
	if (--s->held == 0 && !s->dead)
		src_hold(s, 0);
}

/* Free the sources closed while polls ran, once none runs. */
static void free_dead(void)
{
	int i;

	if (in_poll)
		return;
	for (i = 0; i < nsources; i++)
		if (sources[i] && sources[i]->dead && !sources[i]->held)
			src_free(sources[i]);
}

/* core.loop_poll(timeout_s) -> events, signal, si_code
 * Wait up to timeout_s (negative: forever) for any source, run the
 * callbacks of those ready, and return how many fired and the signal that
 * arrived meanwhile (0 for none; it counts as handled once returned).
 * From a callback it runs nested, without the sources whose callbacks are
 * running; past DN_LOOP_MAX_DEPTH it returns nil, "nested", depth. */
static int l_loop_poll(lua_State *L)
{
	double timeout = luaL_optnumber(L, 1, -1);
	struct epoll_event evs[64];
	int n, i, ms, sig, fired = 0;

	if (in_poll >= DN_LOOP_MAX_DEPTH) {
		lua_pushnil(L);
		lua_pushliteral(L, "nested");
		lua_pushinteger(L, in_poll);
		return 3;
	}
	if (timeout < 0)
		ms = -1;
	else
		ms = (int)(timeout * 1000.0 + 0.999);
	cb_L = L;
	in_poll++;
	if (dn_loop_signal_pending)
		ms = 0;
	n = epoll_wait(epfd, evs, 64, ms);
	if (n < 0 && errno != EINTR) {
		int err = errno;

		in_poll--;
		free_dead();
		return luaL_error(L, "epoll_wait: %s", strerror(err));
	}
	for (i = 0; i < n; i++) {
		struct watch *w = evs[i].data.ptr;
		uint64_t v;

		if (!w) {
			if (read(wakefd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				break;
			continue;
		}
		/* a callback may have closed a source of this batch, or an
		 * outer frame may be running it (its event comes again once
		 * it is put back: the fds are level-triggered) */
		if (!w->src->dead && !w->src->held) {
			dispatch(w);
			fired++;
		} else if (w->src->held && w->src->kind == SRC_PERF) {
			w->pending = 1;
		}
		if (err_ref != LUA_NOREF)
			break;
	}
	in_poll--;
	free_dead();
	sig = dn_loop_signal_pending;
	dn_loop_signal_pending = 0;
	if (err_ref != LUA_NOREF) {
		lua_rawgeti(L, LUA_REGISTRYINDEX, err_ref);
		luaL_unref(L, LUA_REGISTRYINDEX, err_ref);
		err_ref = LUA_NOREF;
		return lua_error(L);
	}
	lua_pushinteger(L, fired);
	lua_pushinteger(L, sig);
	lua_pushinteger(L, dn_loop_signal_code);
	return 3;
}

/* core.loop_depth() -> polls in progress (0 outside the loop) */
static int l_loop_depth(lua_State *L)
{
	lua_pushinteger(L, in_poll);
	return 1;
}

/* core.signal_take() -> signal, si_code: the pending signal, now handled */
static int l_signal_take(lua_State *L)
{
	int sig = dn_loop_signal_pending;

	dn_loop_signal_pending = 0;
	lua_pushinteger(L, sig);
	lua_pushinteger(L, dn_loop_signal_code);
	return 2;
}

/* core.defer_signals(on): while on (nesting), signals are only returned by
 * loop_poll, never raised into running Lua code */
static int l_defer_signals(lua_State *L)
{
	if (lua_toboolean(L, 1))
		defer_depth++;
	else if (defer_depth > 0)
		defer_depth--;
	return 0;
}

/* core.raise_interrupt(sig): raise the error a signal raises */
static int l_raise_interrupt(lua_State *L)
{
	int sig = (int)luaL_checkinteger(L, 1);

	dn_loop_signal_pending = 0;
	interrupting = sig;
	push_interrupt(L, sig);
	return lua_error(L);
}

/* core.interrupt_handled(): the interrupt was dealt with and the program
 * goes on (the REPL): the next signal interrupts again */
static int l_interrupt_handled(lua_State *L)
{
	(void)L;
	interrupting = 0;
	return 0;
}

/* core.signals_deferred() -> bool: inside core.defer_signals(true)? */
static int l_signals_deferred(lua_State *L)
{
	lua_pushboolean(L, defer_depth > 0);
	return 1;
}

/* core.interrupted() -> signal | nil: the signal whose interrupt error was
 * raised (the run is ending because of it) */
static int l_interrupted(lua_State *L)
{
	if (!interrupting)
		return 0;
	lua_pushinteger(L, interrupting);
	return 1;
}

int dn_loop_init(lua_State *L)
{
	struct sigaction sa;
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };

	epfd = epoll_create1(EPOLL_CLOEXEC);
	wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (epfd < 0 || wakefd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, wakefd, &ev) < 0)
		return -1;
	hook_L = L;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_signal;
	sa.sa_flags = SA_SIGINFO; /* no SA_RESTART: waits return EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	/* a closed output pipe is an error to report, not a silent death */
	signal(SIGPIPE, SIG_IGN);
	return 0;
}

int dn_loop_wakefd(void)
{
	return wakefd;
}

void dn_loop_shutdown(void)
{
	int i;

	for (i = 0; i < nsources; i++)
		if (sources[i]) {
			dn_cleanup_remove(sources[i]);
			src_free(sources[i]);
		}
}

void dn_loop_open(lua_State *L)
{
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "loop_ringbuf", l_loop_ringbuf },
		{ "loop_perfbuf", l_loop_perfbuf },
		{ "loop_timer", l_loop_timer },
		{ "loop_fd", l_loop_fd },
		{ "loop_timer_at", l_loop_timer_at },
		{ "loop_close", l_loop_close },
		{ "loop_lost", l_loop_lost },
		{ "loop_poll", l_loop_poll },
		{ "loop_depth", l_loop_depth },
		{ "signal_take", l_signal_take },
		{ "raise_interrupt", l_raise_interrupt },
		{ "defer_signals", l_defer_signals },
		{ "signals_deferred", l_signals_deferred },
		{ "interrupted", l_interrupted },
		{ "interrupt_handled", l_interrupt_handled },
		{ NULL, NULL },
	};
	/* clang-format on */
	dn_vm_setfuncs(L, fns);
	lua_pushinteger(L, DN_LOOP_MAX_DEPTH);
	lua_setfield(L, -2, "LOOP_MAX_DEPTH");
}
