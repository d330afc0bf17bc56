/*
 * dn_bcc_load.c - a module's functions loaded into the kernel from its
 * image (with their map references patched), and images kept in and read
 * from the compile cache: maps created, the program's BTF loaded, no
 * compiler in the process. Also reading a task iterator's records.
 *
 * Depends on dn_bcc.h, dn_bpfcache.c (entries) and libbcc_bpf.
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

/* Function `name` of the image, or NULL. */
struct dn_bpf_func *dn_bcc_image_func(struct dn_bpf *m, const char *name)
{
	uint32_t i;

	for (i = 0; i < m->img.nfns; i++)
		if (strcmp(m->img.fns[i].name, name) == 0)
			return &m->img.fns[i];
	return NULL;
}

/* Table `name` of the image, or NULL. */
struct dn_bpf_table *dn_bcc_image_table(struct dn_bpf *m, const char *name)
{
	uint32_t i;

	for (i = 0; i < m->img.ntabs; i++)
		if (strcmp(m->img.tabs[i].name, name) == 0)
			return &m->img.tabs[i];
	return NULL;
}

/* A copy of f's instructions with every map reference holding the map's
 * descriptor (malloc'd), or NULL. */
struct bpf_insn *dn_bcc_image_code(struct dn_bpf *m, const struct dn_bpf_func *f)
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
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
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
	struct dn_bpf *m = dn_bcc_new_module(L);
	int rc = dn_bpfcache_read(path, key, &m->img, NULL, why, sizeof(why));

	if (rc == 0) {
		m->open = 1;
		dn_cleanup_add(m, dn_bcc_module_release);
		if (image_create_maps(m, why, sizeof(why)) == 0)
			return 1;
		dn_cleanup_remove(m);
		dn_bcc_module_release(m);
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

/* m:cached() -> whether the module came from the cache */
static int l_module_cached(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);

	lua_pushboolean(L, m->mod == NULL);
	return 1;
}

/* Load a function of a cached module as libbcc would (its name, license
 * and kernel version; libbcc prints the verifier's log on failure). */
static int image_load(struct dn_bpf *m, const struct dn_bpf_func *f, int type, int attach_type)
{
	struct bpf_prog_load_opts opts;
	struct bpf_insn *in = dn_bcc_image_code(m, f);
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
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	const char *name = luaL_checkstring(L, 2);
	int type = (int)luaL_checkinteger(L, 3);
	int attach_type = (int)luaL_optinteger(L, 4, -1);
	struct dn_bpf_func *f = dn_bcc_image_func(m, name);
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
	dn_bcc_capture_begin(&cap);
	if (m->mod)
		fd = bcc_func_load(m->mod, type, name, bpf_function_start(m->mod, name),
		                   (int)bpf_function_size(m->mod, name), bpf_module_license(m->mod),
		                   bpf_module_kern_version(m->mod), 0, NULL, 0, NULL, attach_type);
	else
		fd = image_load(m, f, type, attach_type);
	err = errno;
	dn_bcc_capture_end(L, &cap);
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

/* clang-format off */
const luaL_Reg dn_bcc_load_methods[] = {
	{ "load", l_module_load },
	{ "cached", l_module_cached },
	{ "cache_save", l_module_cache_save },
	{ NULL, NULL },
};
const luaL_Reg dn_bcc_load_fns[] = {
	{ "bpf_cache_load", l_bpf_cache_load },
	{ "bpf_cache_info", l_bpf_cache_info },
	{ "iter_read", l_iter_read },
	{ NULL, NULL },
};
/* clang-format on */
