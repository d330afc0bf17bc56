/*
 * dn_bcc.c - libbcc from Lua: the module object's life and the library of
 * libbcc's compiler. The binding's other parts (dn_bcc.h lists them)
 * compile BPF C, load programs, attach them, describe tables, and read and
 * write maps; this file registers them all into `denet.core`.
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
 * libbcc's compiler (libbcc.so, which maps clang and LLVM: ~66 MiB) is
 * opened only when something is compiled; loading, attaching and maps use
 * libbcc_bpf, which denet links. A module describes itself from an image
 * (dn_bpfcache.c): taken from libbcc right after a compile, or read from
 * the cache, in which case its maps are created and its functions loaded
 * with no compiler in the process.
 */

#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "dn_bcc.h"

/* Sanitizers cannot run a library opened with RTLD_DEEPBIND: their builds
 * link libbcc.so itself (DN_BCC_LINKED, no libbcc_bpf), so the dlopen
 * below finds the library already loaded and binds nothing twice. */
#ifdef DN_BCC_LINKED
#define DN_DLOPEN_DEEPBIND 0
#else
#define DN_DLOPEN_DEEPBIND RTLD_DEEPBIND
#endif

#define X(f) __typeof__(&f) dn_bcc_p_##f;
DN_BCC_FNS(X)
#undef X

/* Open libbcc.so once; 0, or -1 with the reason pushed as a string. */
int dn_bcc_compiler(lua_State *L)
{
	static int state; /* 0 not tried, 1 open, -1 failed */
	static char err[DN_ERRBUF];
	void *h;

	if (state == 0) {
		state = -1;
		/* libbcc.so holds its own copy of libbcc_bpf's code and C++
		 * statics: bound to itself (RTLD_DEEPBIND), each copy keeps its
		 * own, and no static is destroyed twice at exit. */
		h = dlopen("libbcc.so.0", RTLD_NOW | RTLD_LOCAL | DN_DLOPEN_DEEPBIND);
		if (!h) {
			snprintf(err, sizeof(err), "cannot open libbcc's compiler: %s", dlerror());
			goto done;
		}
#define X(f)                                                             \
	dn_bcc_p_##f = (__typeof__(&f))dlsym(h, #f);                     \
	if (!dn_bcc_p_##f) {                                             \
		snprintf(err, sizeof(err), "libbcc.so.0 has no %s", #f); \
		goto done;                                               \
	}
		DN_BCC_FNS(X)
#undef X
		state = 1;
	}
done:
	if (state == 1)
		return 0;
	lua_pushstring(L, err);
	return -1;
}

/* --- stderr capture --------------------------------------------------- */

void dn_bcc_capture_begin(struct capture *c)
{
	fflush(stderr);
	c->saved = dup(STDERR_FILENO);
	c->mfd = memfd_create("denet-stderr", MFD_CLOEXEC);
	if (c->saved >= 0 && c->mfd >= 0)
		dup2(c->mfd, STDERR_FILENO);
}

/* Restore stderr and push what was written meanwhile (a string). */
void dn_bcc_capture_end(lua_State *L, struct capture *c)
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
void dn_bcc_capture_drop(struct capture *c)
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

void dn_bcc_detach_one(struct dn_att *a)
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

/* Closing a tracepoint's perf event waits for the kernel's RCU grace
 * periods (perf_trace_event_unreg -> tracepoint_synchronize_unregister,
 * under event_mutex): ~50-75 ms each here. Closed from one thread each,
 * part of the waits overlap (four tracepoints: 0.30 s -> 0.18 s); the
 * mutex serializes the rest. dn_bcc_detach_start() begins that and returns;
 * dn_bcc_detach_finish() waits for it. */
static void *close_fd_thread(void *arg)
{
	close((int)(intptr_t)arg);
	return NULL;
}

void dn_bcc_detach_start(struct dn_bpf *m)
{
	int i;

	for (i = m->natts - 1; i >= 0; i--) {
		struct dn_att *a = &m->atts[i];

		if (a->fd < 0)
			continue;
		if (a->kind == ATT_PERF_FD && m->nclosers < (int)(sizeof(m->closers) / sizeof(m->closers[0])) &&
		    pthread_create(&m->closers[m->nclosers], NULL, close_fd_thread, (void *)(intptr_t)a->fd) == 0) {
			m->nclosers++;
			a->fd = -1;
			continue;
		}
		dn_bcc_detach_one(a);
	}
}

void dn_bcc_detach_finish(struct dn_bpf *m)
{
	int i;

	for (i = 0; i < m->nclosers; i++)
		pthread_join(m->closers[i], NULL);
	m->nclosers = 0;
}

void dn_bcc_module_release(void *obj)
{
	struct dn_bpf *m = obj;
	uint32_t t;
	int i;

	if (!m->open)
		return;
	m->open = 0;
	/* detach first, so no program runs while its maps go away */
	dn_bcc_detach_start(m);
	dn_bcc_detach_finish(m);
	for (i = 0; i < m->nprogs; i++) {
		close(m->progs[i].fd);
		free(m->progs[i].name);
	}
	free(m->progs);
	free(m->atts);
	m->progs = NULL;
	m->atts = NULL;
	m->nprogs = m->natts = m->catts = 0;
	if (m->mod) {
		bpf_module_destroy(m->mod);
		m->mod = NULL;
	} else {
		/* from the cache: the maps and BTF are ours */
		for (t = 0; t < m->img.ntabs; t++)
			if (m->img.tabs[t].fd >= 0)
				close(m->img.tabs[t].fd);
		if (m->btf_fd >= 0)
			close(m->btf_fd);
	}
	dn_bpf_image_free(&m->img);
}

struct dn_bpf *dn_bcc_check_module(lua_State *L, int idx)
{
	struct dn_bpf *m = luaL_checkudata(L, idx, MODULE_MT);

	if (!m->open)
		luaL_error(L, "BPF module is closed");
	return m;
}

static int module_gc(lua_State *L)
{
	struct dn_bpf *m = luaL_checkudata(L, 1, MODULE_MT);

	if (m->open) {
		dn_cleanup_remove(m);
		dn_bcc_module_release(m);
	}
	return 0;
}

struct dn_bpf *dn_bcc_new_module(lua_State *L)
{
	struct dn_bpf *m = lua_newuserdata(L, sizeof(*m));

	memset(m, 0, sizeof(*m));
	m->btf_fd = -1;
	luaL_getmetatable(L, MODULE_MT);
	lua_setmetatable(L, -2);
	return m;
}

static int l_module_close(lua_State *L)
{
	struct dn_bpf *m = luaL_checkudata(L, 1, MODULE_MT);

	if (m->open) {
		dn_cleanup_remove(m);
		dn_bcc_module_release(m);
	}
	return 0;
}

/* Add the functions of each part's list to the table on top. */
static void add_all(lua_State *L, const luaL_Reg *const *lists)
{
	for (; *lists; lists++)
		dn_vm_setfuncs(L, *lists);
}

void dn_bcc_open(lua_State *L)
{
	static const luaL_Reg own[] = {
		{ "close", l_module_close },
		{ NULL, NULL },
	};
	static const luaL_Reg *const methods[] = {
		own, dn_bcc_compile_methods, dn_bcc_load_methods, dn_bcc_attach_methods, dn_bcc_maps_methods, NULL
	};
	static const luaL_Reg *const fns[] = { dn_bcc_compile_fns, dn_bcc_load_fns, dn_bcc_maps_fns, NULL };

	dn_vm_newclass(L, MODULE_MT, module_gc, own);
	/* stack: core; the class's methods are its metatable's __index */
	luaL_getmetatable(L, MODULE_MT);
	lua_getfield(L, -1, "__index");
	add_all(L, methods + 1);
	lua_pop(L, 2);
	add_all(L, fns);
}
