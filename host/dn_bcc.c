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
 *
 * libbcc's compiler (libbcc.so, which maps clang and LLVM: ~66 MiB) is
 * opened only when something is compiled; loading, attaching and maps use
 * libbcc_bpf, which denet links. A module describes itself from an image
 * (dn_bpfcache.c): taken from libbcc right after a compile, or read from
 * the cache, in which case this file creates its maps and loads its
 * functions itself, with no compiler in the process.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <zlib.h>

#include <bcc/bcc_common.h>
#include <bcc/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>

#include "dn.h"

/* What is used of libbcc.so, resolved when it is first needed. */
#define DN_BCC_FNS(X)                      \
	X(bpf_module_create_c)             \
	X(bpf_module_create_c_from_string) \
	X(bpf_module_destroy)              \
	X(bpf_num_functions)               \
	X(bpf_function_name)               \
	X(bpf_function_start)              \
	X(bpf_function_size)               \
	X(bpf_module_license)              \
	X(bpf_module_kern_version)         \
	X(bpf_num_tables)                  \
	X(bpf_table_id)                    \
	X(bpf_table_name)                  \
	X(bpf_table_fd_id)                 \
	X(bpf_table_type_id)               \
	X(bpf_table_key_size_id)           \
	X(bpf_table_leaf_size_id)          \
	X(bpf_table_key_desc_id)           \
	X(bpf_table_leaf_desc_id)          \
	X(bpf_table_max_entries_id)        \
	X(bpf_table_flags_id)              \
	X(bpf_perf_event_fields)           \
	X(bpf_perf_event_field)            \
	X(bpf_table_key_snprintf)          \
	X(bpf_table_leaf_snprintf)         \
	X(bpf_table_key_sscanf)            \
	X(bpf_table_leaf_sscanf)           \
	X(bcc_func_load)

/* Sanitizers cannot run a library opened with RTLD_DEEPBIND: their builds
 * link libbcc.so itself (DN_BCC_LINKED, no libbcc_bpf), so the dlopen
 * below finds the library already loaded and binds nothing twice. */
#ifdef DN_BCC_LINKED
#define DN_DLOPEN_DEEPBIND 0
#else
#define DN_DLOPEN_DEEPBIND RTLD_DEEPBIND
#endif

#define X(f) static __typeof__(&f) p_##f;
DN_BCC_FNS(X)
#undef X

/* Open libbcc.so once; 0, or -1 with the reason pushed as a string. */
static int bcc_compiler(lua_State *L)
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
	p_##f = (__typeof__(&f))dlsym(h, #f);                            \
	if (!p_##f) {                                                    \
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

#define DN_BCC(f) (*p_##f)
#define bpf_module_create_c DN_BCC(bpf_module_create_c)
#define bpf_module_create_c_from_string DN_BCC(bpf_module_create_c_from_string)
#define bpf_module_destroy DN_BCC(bpf_module_destroy)
#define bpf_num_functions DN_BCC(bpf_num_functions)
#define bpf_function_name DN_BCC(bpf_function_name)
#define bpf_function_start DN_BCC(bpf_function_start)
#define bpf_function_size DN_BCC(bpf_function_size)
#define bpf_module_license DN_BCC(bpf_module_license)
#define bpf_module_kern_version DN_BCC(bpf_module_kern_version)
#define bpf_num_tables DN_BCC(bpf_num_tables)
#define bpf_table_id DN_BCC(bpf_table_id)
#define bpf_table_name DN_BCC(bpf_table_name)
#define bpf_table_fd_id DN_BCC(bpf_table_fd_id)
#define bpf_table_type_id DN_BCC(bpf_table_type_id)
#define bpf_table_key_size_id DN_BCC(bpf_table_key_size_id)
#define bpf_table_leaf_size_id DN_BCC(bpf_table_leaf_size_id)
#define bpf_table_key_desc_id DN_BCC(bpf_table_key_desc_id)
#define bpf_table_leaf_desc_id DN_BCC(bpf_table_leaf_desc_id)
#define bpf_table_max_entries_id DN_BCC(bpf_table_max_entries_id)
#define bpf_table_flags_id DN_BCC(bpf_table_flags_id)
#define bpf_perf_event_fields DN_BCC(bpf_perf_event_fields)
#define bpf_perf_event_field DN_BCC(bpf_perf_event_field)
#define bpf_table_key_snprintf DN_BCC(bpf_table_key_snprintf)
#define bpf_table_leaf_snprintf DN_BCC(bpf_table_leaf_snprintf)
#define bpf_table_key_sscanf DN_BCC(bpf_table_key_sscanf)
#define bpf_table_leaf_sscanf DN_BCC(bpf_table_leaf_sscanf)
#define bcc_func_load DN_BCC(bcc_func_load)

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
	int open;
	void *mod;               /* libbcc's module; NULL when loaded from the cache */
	struct dn_bpf_image img; /* tables and functions (map references as indices) */
	const char *uncacheable; /* why the image cannot be kept, or NULL */
	int btf_fd;              /* cached: the program's BTF, -1 without */
	struct dn_prog *progs;
	int nprogs;
	struct dn_att *atts;
	int natts, catts;
	pthread_t closers[64]; /* closing perf events (detach_start) */
	int nclosers;
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

/* Closing a tracepoint's perf event waits for the kernel's RCU grace
 * periods (perf_trace_event_unreg -> tracepoint_synchronize_unregister,
 * under event_mutex): ~50-75 ms each here. Closed from one thread each,
 * part of the waits overlap (four tracepoints: 0.30 s -> 0.18 s); the
 * mutex serializes the rest. detach_start() begins that and returns;
 * detach_finish() waits for it. */
static void *close_fd_thread(void *arg)
{
	close((int)(intptr_t)arg);
	return NULL;
}

static void detach_start(struct dn_bpf *m)
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
		detach_one(a);
	}
}

static void detach_finish(struct dn_bpf *m)
{
	int i;

	for (i = 0; i < m->nclosers; i++)
		pthread_join(m->closers[i], NULL);
	m->nclosers = 0;
}

static void module_release(void *obj)
{
	struct dn_bpf *m = obj;
	uint32_t t;
	int i;

	if (!m->open)
		return;
	m->open = 0;
	/* detach first, so no program runs while its maps go away */
	detach_start(m);
	detach_finish(m);
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

static struct dn_bpf *check_module(lua_State *L, int idx)
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
		module_release(m);
	}
	return 0;
}

static struct dn_bpf *new_module(lua_State *L)
{
	struct dn_bpf *m = lua_newuserdata(L, sizeof(*m));

	memset(m, 0, sizeof(*m));
	m->btf_fd = -1;
	luaL_getmetatable(L, MODULE_MT);
	lua_setmetatable(L, -2);
	return m;
}

static char *dup_or_empty(const char *s)
{
	return strdup(s ? s : "");
}

#define IS_MAP_LOAD(i) ((i)->code == (BPF_LD | BPF_IMM | BPF_DW) && (i)->src_reg == BPF_PSEUDO_MAP_FD)

/* Describe a freshly compiled module in m->img: its tables, and its
 * functions with each map reference turned into the table's index. A
 * reference to a map the module does not own (a table shared with another
 * module) leaves the image uncacheable. Returns -1 when out of memory. */
static int image_from_module(struct dn_bpf *m)
{
	struct dn_bpf_image *img = &m->img;
	size_t nt = bpf_num_tables(m->mod), nf = bpf_num_functions(m->mod), i, j;

	img->license = dup_or_empty(bpf_module_license(m->mod));
	img->kern_version = bpf_module_kern_version(m->mod);
	img->tabs = calloc(nt + 1, sizeof(*img->tabs));
	img->fns = calloc(nf + 1, sizeof(*img->fns));
	if (!img->license || !img->tabs || !img->fns)
		return -1;
	for (i = 0; i < nt; i++) {
		struct dn_bpf_table *t = &img->tabs[i];
		const char *name = bpf_table_name(m->mod, i);
		size_t k;

		img->ntabs++;
		t->name = dup_or_empty(name);
		t->fd = bpf_table_fd_id(m->mod, i);
		t->type = (uint32_t)bpf_table_type_id(m->mod, i);
		t->key_size = (uint32_t)bpf_table_key_size_id(m->mod, i);
		t->leaf_size = (uint32_t)bpf_table_leaf_size_id(m->mod, i);
		t->max_entries = (uint32_t)bpf_table_max_entries_id(m->mod, i);
		t->flags = (uint32_t)bpf_table_flags_id(m->mod, i);
		t->key_desc = dup_or_empty(bpf_table_key_desc_id(m->mod, i));
		t->leaf_desc = dup_or_empty(bpf_table_leaf_desc_id(m->mod, i));
		k = bpf_perf_event_fields(m->mod, name);
		t->fields = calloc(k + 1, sizeof(*t->fields));
		if (!t->name || !t->key_desc || !t->leaf_desc || !t->fields)
			return -1;
		for (j = 0; j < k; j++, t->nfields++)
			if (!(t->fields[j] = dup_or_empty(bpf_perf_event_field(m->mod, name, j))))
				return -1;
		if (t->type == BPF_MAP_TYPE_ARRAY_OF_MAPS || t->type == BPF_MAP_TYPE_HASH_OF_MAPS)
			m->uncacheable = "it has a map of maps";
	}
	for (i = 0; i < nf; i++) {
		struct dn_bpf_func *f = &img->fns[i];
		const char *name = bpf_function_name(m->mod, i);
		struct bpf_insn *in;
		size_t n;

		img->nfns++;
		f->name = dup_or_empty(name);
		f->len = bpf_function_size(m->mod, name);
		f->code = malloc(f->len ? f->len : 1);
		if (!f->name || !f->code)
			return -1;
		memcpy(f->code, bpf_function_start(m->mod, name), f->len);
		in = (struct bpf_insn *)f->code;
		n = f->len / sizeof(*in);
		for (j = 0; j + 1 < n; j++) {
			uint32_t t;

			if (!IS_MAP_LOAD(&in[j]))
				continue;
			for (t = 0; t < img->ntabs && img->tabs[t].fd != in[j].imm; t++)
				;
			if (t == img->ntabs)
				m->uncacheable = "it uses a map of another program";
			in[j].imm = (int32_t)t;
			j++;
		}
	}
	return 0;
}

/* Function `name` of the image, or NULL. */
static struct dn_bpf_func *image_func(struct dn_bpf *m, const char *name)
{
	uint32_t i;

	for (i = 0; i < m->img.nfns; i++)
		if (strcmp(m->img.fns[i].name, name) == 0)
			return &m->img.fns[i];
	return NULL;
}

/* Table `name` of the image, or NULL. */
static struct dn_bpf_table *image_table(struct dn_bpf *m, const char *name)
{
	uint32_t i;

	for (i = 0; i < m->img.ntabs; i++)
		if (strcmp(m->img.tabs[i].name, name) == 0)
			return &m->img.tabs[i];
	return NULL;
}

/* A copy of f's instructions with every map reference holding the map's
 * descriptor (malloc'd), or NULL. */
static struct bpf_insn *image_code(struct dn_bpf *m, const struct dn_bpf_func *f)
{
	struct bpf_insn *in = malloc(f->len ? f->len : 1);
	size_t n = f->len / sizeof(*in), j;

	if (!in)
		return NULL;
	memcpy(in, f->code, f->len);
	for (j = 0; j + 1 < n; j++)
		if (IS_MAP_LOAD(&in[j])) {
			uint32_t t = (uint32_t)in[j].imm;

			in[j].imm = t < m->img.ntabs ? m->img.tabs[t].fd : -1;
			j++;
		}
	return in;
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
		for (i = 0; i < ncflags; i++) {
			lua_rawgeti(L, 3, i + 1);
			if (!lua_isstring(L, -1))
				return luaL_error(L, "cflags[%d] is not a string", i + 1);
			lua_pop(L, 1);
		}
	}
	if (bcc_compiler(L) != 0) {
		lua_pushnil(L);
		lua_insert(L, -2);
		return 2;
	}
	cflags = calloc((size_t)ncflags + 1, sizeof(*cflags));
	if (!cflags)
		return luaL_error(L, "out of memory");
	for (i = 0; i < ncflags; i++) {
		lua_rawgeti(L, 3, i + 1);
		cflags[i] = lua_tostring(L, -1); /* kept alive by the table */
		lua_pop(L, 1);
	}
	m = new_module(L);

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
	m->open = 1;
	dn_cleanup_add(m, module_release);
	if (image_from_module(m) != 0)
		return luaL_error(L, "out of memory");
	return 2;
}

/* The BTF of the program's maps, for the cache: each table's type ids and
 * the BTF blob (the kernel hands back what libbcc loaded). */
static int image_btf(struct dn_bpf *m, char *why, size_t n)
{
	uint32_t i, btf_id = 0;
	struct bpf_btf_info bi;
	__u32 len;
	int bfd;

	for (i = 0; i < m->img.ntabs; i++) {
		struct dn_bpf_table *t = &m->img.tabs[i];
		struct bpf_map_info mi;

		memset(&mi, 0, sizeof(mi));
		len = sizeof(mi);
		if (bpf_obj_get_info_by_fd(t->fd, &mi, &len) != 0) {
			snprintf(why, n, "cannot describe map %s: %s", t->name, strerror(errno));
			return -1;
		}
		t->btf_key = mi.btf_key_type_id;
		t->btf_value = mi.btf_value_type_id;
		if (mi.btf_id)
			btf_id = mi.btf_id;
	}
	if (!btf_id || m->img.btf)
		return 0;
	bfd = bpf_btf_get_fd_by_id(btf_id);
	if (bfd < 0) {
		snprintf(why, n, "cannot open the program's BTF: %s", strerror(errno));
		return -1;
	}
	memset(&bi, 0, sizeof(bi));
	len = sizeof(bi);
	if (bpf_obj_get_info_by_fd(bfd, &bi, &len) == 0 && bi.btf_size > 0) {
		uint32_t size = bi.btf_size;
		void *blob = malloc(size);

		memset(&bi, 0, sizeof(bi));
		bi.btf = (__u64)(uintptr_t)blob;
		bi.btf_size = size;
		len = sizeof(bi);
		if (blob && bpf_obj_get_info_by_fd(bfd, &bi, &len) == 0 && bi.btf_size == size) {
			m->img.btf = blob;
			m->img.btf_len = size;
		} else {
			free(blob);
		}
	}
	close(bfd);
	if (!m->img.btf) {
		snprintf(why, n, "cannot read the program's BTF");
		return -1;
	}
	return 0;
}

/* m:cache_save(path, key, label) -> true | nil, why
 * Keep what was compiled; "why" also says when a program cannot be kept. */
static int l_module_cache_save(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	const char *path = luaL_checkstring(L, 2), *key = luaL_checkstring(L, 3);
	const char *label = luaL_optstring(L, 4, "");
	char why[DN_ERRBUF] = "";

	if (!m->mod)
		return dn_vm_fail(L, EINVAL, "the program came from the cache");
	if (m->uncacheable)
		return dn_vm_fail(L, EINVAL, "the program cannot be cached: %s", m->uncacheable);
	if (image_btf(m, why, sizeof(why)) != 0 || dn_bpfcache_write(path, key, label, &m->img, why, sizeof(why)) != 0)
		return dn_vm_fail(L, EIO, "%s", why);
	lua_pushboolean(L, 1);
	return 1;
}

static const char *cache_reason(int rc)
{
	switch (rc) {
	case DN_CACHE_ABSENT:
		return "absent";
	case DN_CACHE_DAMAGED:
		return "damaged";
	case DN_CACHE_OTHER:
		return "other";
	case DN_CACHE_REFUSED:
		return "refused";
	default:
		return "load";
	}
}

/* Create the maps of a module read from the cache; 0 or -1 with why. */
static int image_create_maps(struct dn_bpf *m, char *why, size_t n)
{
	uint32_t i;

	if (m->img.btf_len) {
		m->btf_fd = bpf_btf_load(m->img.btf, m->img.btf_len, NULL);
		if (m->btf_fd < 0) {
			snprintf(why, n, "cannot load the program's BTF: %s", strerror(errno));
			return -1;
		}
	}
	for (i = 0; i < m->img.ntabs; i++) {
		struct dn_bpf_table *t = &m->img.tabs[i];
		struct bcc_create_map_attr attr;

		memset(&attr, 0, sizeof(attr));
		attr.name = t->name;
		attr.map_type = (enum bpf_map_type)t->type;
		attr.map_flags = t->flags;
		attr.key_size = t->key_size;
		attr.value_size = t->leaf_size;
		attr.max_entries = t->max_entries;
		if ((t->btf_key || t->btf_value) && m->btf_fd >= 0) {
			attr.btf_fd = (__u32)m->btf_fd;
			attr.btf_key_type_id = t->btf_key;
			attr.btf_value_type_id = t->btf_value;
		}
		t->fd = bcc_create_map_xattr(&attr, false);
		if (t->fd < 0) {
			snprintf(why, n, "cannot create map %s: %s", t->name, strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* core.bpf_cache_load(path, key) -> module | nil, why, reason
 * A module from a cache entry: its maps created, its functions loaded on
 * demand, no compiler opened. reason: "absent", "damaged" (short, wrong
 * length or checksum), "other" (another key), "refused" (not a trusted
 * file) or "load" (the kernel refused a map). */
static int l_bpf_cache_load(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1), *key = luaL_checkstring(L, 2);
	char why[DN_ERRBUF] = "";
	struct dn_bpf *m = new_module(L);
	int rc = dn_bpfcache_read(path, key, &m->img, NULL, why, sizeof(why));

	if (rc == 0) {
		m->open = 1;
		dn_cleanup_add(m, module_release);
		if (image_create_maps(m, why, sizeof(why)) == 0)
			return 1;
		dn_cleanup_remove(m);
		module_release(m);
		rc = -1;
	} else {
		dn_bpf_image_free(&m->img);
	}
	lua_pushnil(L);
	lua_pushstring(L, why);
	lua_pushstring(L, cache_reason(rc));
	return 3;
}

/* core.bpf_cache_info(path) -> { key, label, size } | nil, why
 * What `denet cache ls` shows of an entry; the checksum is checked. */
static int l_bpf_cache_info(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char why[DN_ERRBUF] = "", *buf = NULL, *label = NULL;
	struct dn_bpf_image img;
	size_t len = 0;
	int rc = dn_trust_read(path, &buf, &len, why, sizeof(why));

	if (rc < 0)
		return dn_vm_fail(L, -rc, "%s", why[0] ? why : strerror(-rc));
	rc = dn_bpfcache_parse(buf, len, NULL, &img, &label, why, sizeof(why));
	free(buf);
	if (rc != 0)
		return dn_vm_fail(L, EINVAL, "%s", why);
	lua_createtable(L, 0, 4);
	lua_pushstring(L, label);
	lua_setfield(L, -2, "label");
	lua_pushinteger(L, (lua_Integer)len);
	lua_setfield(L, -2, "size");
	lua_pushinteger(L, img.nfns);
	lua_setfield(L, -2, "functions");
	lua_pushinteger(L, img.ntabs);
	lua_setfield(L, -2, "tables");
	free(label);
	dn_bpf_image_free(&img);
	return 1;
}

/* core.iter_read(progfd) -> bytes | nil, msg, errno
 * Run a BPF iterator program once: attach it, open an instance and read
 * all it writes. */
static int l_iter_read(lua_State *L)
{
	int progfd = (int)luaL_checkinteger(L, 1);
	int link, fd, err = 0;
	luaL_Buffer b;
	char buf[8192];
	ssize_t n;

	link = bcc_iter_attach(progfd, NULL, 0);
	if (link < 0)
		return dn_vm_fail(L, errno, "cannot attach the iterator: %s", strerror(errno));
	fd = bcc_iter_create(link);
	if (fd < 0) {
		err = errno;
		close(link);
		return dn_vm_fail(L, err, "cannot open the iterator: %s", strerror(err));
	}
	luaL_buffinit(L, &b);
	for (;;) {
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err = n < 0 ? errno : 0;
			break;
		}
		luaL_addlstring(&b, buf, (size_t)n);
	}
	close(fd);
	close(link);
	luaL_pushresult(&b);
	if (err)
		return dn_vm_fail(L, err, "cannot read the iterator: %s", strerror(err));
	return 1;
}

/* core.hash(text [, previous]) -> 16 hex digits: FNV-1a 64, continuing from
 * a previous result when given */
static int l_hash(lua_State *L)
{
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	const char *prev = luaL_optstring(L, 2, NULL);
	uint64_t h = prev ? strtoull(prev, NULL, 16) : 0;
	char out[17];

	snprintf(out, sizeof(out), "%016llx", (unsigned long long)dn_fnv64(s, n, h));
	lua_pushstring(L, out);
	return 1;
}

/* core.file_identity(path) -> "size:mtime_ns:crc" | nil: what identifies
 * a file's content for the cache key (links followed). The CRC-32 covers
 * the content when it is at most `max` bytes (default 16 MiB), else 0. */
static int l_file_identity(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	lua_Integer max = luaL_optinteger(L, 2, 16 << 20);
	unsigned long crc = crc32(0L, Z_NULL, 0);
	struct stat st;
	char buf[65536];
	ssize_t r;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st) != 0) {
		if (fd >= 0)
			close(fd);
		lua_pushnil(L);
		return 1;
	}
	if (S_ISREG(st.st_mode) && st.st_size <= max)
		while ((r = read(fd, buf, sizeof(buf))) > 0)
			crc = crc32(crc, (const Bytef *)buf, (uInt)r);
	else
		crc = 0;
	close(fd);
	snprintf(buf, sizeof(buf), "%lld:%lld.%09ld:%08lx", (long long)st.st_size, (long long)st.st_mtim.tv_sec,
	         st.st_mtim.tv_nsec, crc);
	lua_pushstring(L, buf);
	return 1;
}

/* core.compiler_linked() -> whether libbcc's compiler is linked in (the
 * sanitizer builds) rather than opened only to compile */
static int l_compiler_linked(lua_State *L)
{
#ifdef DN_BCC_LINKED
	lua_pushboolean(L, 1);
#else
	lua_pushboolean(L, 0);
#endif
	return 1;
}

/* core.libbcc_dir() -> the folder of the libbcc libraries in use (for the
 * cache key: libbcc.so.0 beside libbcc_bpf), or nil */
static int l_libbcc_dir(lua_State *L)
{
	Dl_info info;
	char *slash;

	if (!dladdr((void *)bcc_create_map_xattr, &info) || !info.dli_fname) {
		lua_pushnil(L);
		return 1;
	}
	slash = strrchr(info.dli_fname, '/');
	if (!slash) {
		lua_pushnil(L);
		return 1;
	}
	lua_pushlstring(L, info.dli_fname, (size_t)(slash - info.dli_fname));
	return 1;
}

static int l_module_close(lua_State *L)
{
	struct dn_bpf *m = luaL_checkudata(L, 1, MODULE_MT);

	if (m->open) {
		dn_cleanup_remove(m);
		module_release(m);
	}
	return 0;
}

/* m:functions() -> { name, ... } in definition order */
static int l_module_functions(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	uint32_t i;

	lua_createtable(L, (int)m->img.nfns, 0);
	for (i = 0; i < m->img.nfns; i++) {
		lua_pushstring(L, m->img.fns[i].name);
		lua_rawseti(L, -2, (int)i + 1);
	}
	return 1;
}

/* m:cached() -> whether the module came from the cache */
static int l_module_cached(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);

	lua_pushboolean(L, m->mod == NULL);
	return 1;
}

/* Load a function of a cached module as libbcc would (its name, license
 * and kernel version; libbcc prints the verifier's log on failure). */
static int image_load(struct dn_bpf *m, const struct dn_bpf_func *f, int type, int attach_type)
{
	struct bpf_prog_load_opts opts;
	struct bpf_insn *in = image_code(m, f);
	int fd, err;

	if (!in) {
		errno = ENOMEM;
		return -1;
	}
	memset(&opts, 0, sizeof(opts));
	opts.sz = sizeof(opts);
	if (attach_type != -1)
		opts.expected_attach_type = (enum bpf_attach_type)attach_type;
	opts.kern_version = m->img.kern_version;
	/* the function's BTF, as libbcc gives it: the kernel then knows the
	 * program by its whole name (bpftool), not the 15 bytes of a name */
	struct bpf_func_info fi = { 0, 0 };
	if (m->btf_fd >= 0 && m->img.btf) {
		struct btf *b = btf__new(m->img.btf, m->img.btf_len);
		int id = b ? btf__find_by_name_kind(b, f->name, BTF_KIND_FUNC) : -1;

		if (id > 0) {
			fi.type_id = (__u32)id;
			opts.prog_btf_fd = (__u32)m->btf_fd;
			opts.func_info = &fi;
			opts.func_info_rec_size = sizeof(fi);
			opts.func_info_cnt = 1;
		}
		btf__free(b);
	}
	fd = bcc_prog_load_xattr((enum bpf_prog_type)type, f->name, m->img.license, in, &opts, (int)f->len, NULL, 0,
	                         false);
	if (fd < 0 && opts.func_info) {
		/* (a program with functions of its own needs them all named) */
		opts.prog_btf_fd = 0;
		opts.func_info = NULL;
		opts.func_info_rec_size = 0;
		opts.func_info_cnt = 0;
		fd = bcc_prog_load_xattr((enum bpf_prog_type)type, f->name, m->img.license, in, &opts, (int)f->len,
		                         NULL, 0, false);
	}
	err = errno;
	free(in);
	errno = err;
	return fd;
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
	struct dn_bpf_func *f = image_func(m, name);
	struct capture cap;
	struct dn_prog *np;
	int fd, err, i;

	for (i = 0; i < m->nprogs; i++)
		if (strcmp(m->progs[i].name, name) == 0) {
			if (m->progs[i].type != type)
				return dn_vm_fail(L, EINVAL, "function %s is already loaded as another program type",
				                  name);
			lua_pushinteger(L, m->progs[i].fd);
			return 1;
		}
	if (!f)
		return dn_vm_fail(L, ENOENT, "no BPF function named '%s' in the program", name);
	capture_begin(&cap);
	if (m->mod)
		fd = bcc_func_load(m->mod, type, name, bpf_function_start(m->mod, name),
		                   (int)bpf_function_size(m->mod, name), bpf_module_license(m->mod),
		                   bpf_module_kern_version(m->mod), 0, NULL, 0, NULL, attach_type);
	else
		fd = image_load(m, f, type, attach_type);
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

/* m:detach_all(): detach every attachment, the perf events closed in
 * parallel (detach_start); the programs and maps stay. On return no
 * program of the module runs any more, so its maps hold still. */
static int l_module_detach_all(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);

	detach_start(m);
	detach_finish(m);
	return 0;
}

/* m:misses(name) -> how many times the kernel skipped loaded function
 * `name` (bpf_prog_info.recursion_misses: another BPF program, or a map
 * operation from user space, held the CPU), or nil when the kernel does
 * not say or the function is not loaded */
static int l_module_misses(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
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
	uint32_t i;

	lua_createtable(L, (int)m->img.ntabs, 0);
	for (i = 0; i < m->img.ntabs; i++) {
		lua_pushstring(L, m->img.tabs[i].name);
		lua_rawseti(L, -2, (int)i + 1);
	}
	return 1;
}

/* m:table_info(name) -> { fd, type, key_size, leaf_size, key_desc,
 *   leaf_desc, max_entries, flags, fields = {"u32 pid", ...} } | nil */
static int l_module_table_info(lua_State *L)
{
	struct dn_bpf *m = check_module(L, 1);
	const struct dn_bpf_table *t = image_table(m, luaL_checkstring(L, 2));
	uint32_t i;

	if (!t) {
		lua_pushnil(L);
		return 1;
	}
	lua_createtable(L, 0, 10);
	lua_pushinteger(L, t->fd);
	lua_setfield(L, -2, "fd");
	lua_pushinteger(L, t->type);
	lua_setfield(L, -2, "type");
	lua_pushinteger(L, (lua_Integer)t->key_size);
	lua_setfield(L, -2, "key_size");
	lua_pushinteger(L, (lua_Integer)t->leaf_size);
	lua_setfield(L, -2, "leaf_size");
	lua_pushstring(L, t->key_desc);
	lua_setfield(L, -2, "key_desc");
	lua_pushstring(L, t->leaf_desc);
	lua_setfield(L, -2, "leaf_desc");
	lua_pushinteger(L, (lua_Integer)t->max_entries);
	lua_setfield(L, -2, "max_entries");
	lua_pushinteger(L, t->flags);
	lua_setfield(L, -2, "flags");
	/* the record type passed to perf_submit / ringbuf_output, if any */
	lua_createtable(L, (int)t->nfields, 0);
	for (i = 0; i < t->nfields; i++) {
		lua_pushstring(L, t->fields[i]);
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
	const struct dn_bpf_func *f = image_func(m, name);
	struct bpf_insn *in;

	if (!f)
		return dn_vm_fail(L, ENOENT, "no BPF function named '%s' in the program", name);
	in = image_code(m, f);
	if (!in)
		return luaL_error(L, "out of memory");
	lua_pushlstring(L, (const char *)in, f->len);
	free(in);
	return 1;
}

/* The table id of name, and whether `which` is "key" (else "leaf"). Needs
 * libbcc's module: a cached one cannot print or scan. */
static size_t table_part(lua_State *L, struct dn_bpf *m, int *is_key)
{
	const char *name = luaL_checkstring(L, 2);
	const char *which = luaL_checkstring(L, 3);
	size_t id;

	if (!m->mod)
		luaL_error(L, "a program from the cache cannot print or read table text (run with --no-cache)");
	id = bpf_table_id(m->mod, name);
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
		{ "detach_all", l_module_detach_all },
		{ "attachments", l_module_attachments },
		{ "misses", l_module_misses },
		{ "tables", l_module_tables },
		{ "table_info", l_module_table_info },
		{ "function_code", l_module_function_code },
		{ "cached", l_module_cached },
		{ "cache_save", l_module_cache_save },
		{ "table_print", l_module_table_print },
		{ "table_scan", l_module_table_scan },
		{ NULL, NULL },
	};
	/* clang-format on */
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "bpf_compile", l_bpf_compile },
		{ "bpf_cache_load", l_bpf_cache_load },
		{ "bpf_cache_info", l_bpf_cache_info },
		{ "hash", l_hash },
		{ "libbcc_dir", l_libbcc_dir },
		{ "compiler_linked", l_compiler_linked },
		{ "file_identity", l_file_identity },
		{ "iter_read", l_iter_read },
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
