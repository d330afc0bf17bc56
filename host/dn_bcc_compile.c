/*
 * dn_bcc_compile.c - BPF C compiled by libbcc's compiler (libbcc.so, opened
 * only now) into a module, and the module described as an image (its
 * tables, and its functions with map references as table indices) that
 * the compile cache keeps; the inputs the cache's key hashes.
 *
 * Depends on dn_bcc.h (the module, the compiler's functions, stderr
 * capture) and dn_bpfcache.c (images).
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <zlib.h>

#include "dn_bcc.h"

static char *dup_or_empty(const char *s)
{
	return strdup(s ? s : "");
}

/* Describe a freshly compiled module in m->img: its tables, and its
 * functions with each map reference turned into the table's index. A
 * reference to a map the module does not own (a table shared with another
 * module) leaves the image uncacheable. Returns -1 when out of memory. */
int dn_bcc_image_from_module(struct dn_bpf *m)
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
	if (dn_bcc_compiler(L) != 0) {
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
	m = dn_bcc_new_module(L);

	dn_bcc_capture_begin(&cap);
	if (is_file)
		mod = bpf_module_create_c(src, debug, cflags, ncflags, false, NULL);
	else
		mod = bpf_module_create_c_from_string(src, debug, cflags, ncflags, false, NULL);
	dn_bcc_capture_end(L, &cap);
	free(cflags);
	/* stack: ..., module, diagnostics */
	if (!mod) {
		lua_pushnil(L);
		lua_insert(L, -2);
		return 2;
	}
	m->mod = mod;
	m->open = 1;
	dn_cleanup_add(m, dn_bcc_module_release);
	if (dn_bcc_image_from_module(m) != 0)
		return luaL_error(L, "out of memory");
	return 2;
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

/* m:functions() -> { name, ... } in definition order */
static int l_module_functions(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	uint32_t i;

	lua_createtable(L, (int)m->img.nfns, 0);
	for (i = 0; i < m->img.nfns; i++) {
		lua_pushstring(L, m->img.fns[i].name);
		lua_rawseti(L, -2, (int)i + 1);
	}
	return 1;
}

/* m:function_code(name) -> the compiled instructions (bytes) | nil, msg */
static int l_module_function_code(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	const char *name = luaL_checkstring(L, 2);
	const struct dn_bpf_func *f = dn_bcc_image_func(m, name);
	struct bpf_insn *in;

	if (!f)
		return dn_vm_fail(L, ENOENT, "no BPF function named '%s' in the program", name);
	in = dn_bcc_image_code(m, f);
	if (!in)
		return luaL_error(L, "out of memory");
	lua_pushlstring(L, (const char *)in, f->len);
	free(in);
	return 1;
}

/* clang-format off */
const luaL_Reg dn_bcc_compile_methods[] = {
	{ "functions", l_module_functions },
	{ "function_code", l_module_function_code },
	{ NULL, NULL },
};
const luaL_Reg dn_bcc_compile_fns[] = {
	{ "bpf_compile", l_bpf_compile },
	{ "hash", l_hash },
	{ "libbcc_dir", l_libbcc_dir },
	{ "compiler_linked", l_compiler_linked },
	{ "file_identity", l_file_identity },
	{ NULL, NULL },
};
/* clang-format on */
