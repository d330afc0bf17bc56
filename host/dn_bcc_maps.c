/*
 * dn_bcc_maps.c - a module's tables described (types, sizes, libbcc's key
 * and leaf descriptions, the records sent through them), printed and
 * scanned as libbcc does, and the map calls: lookup, update, delete, a
 * whole map read in one pass (batches where the kernel has them), clear,
 * create.
 *
 * Map functions take buffers as cdata (their payload address is what
 * lua_topointer returns) or, read-only, as strings; the Lua side sizes them
 * from the table's key and leaf sizes.
 *
 * Depends on dn_bcc.h and libbcc_bpf's map functions.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "dn_bcc.h"

/* A writable buffer argument: cdata (its payload) or, when ro, a string. */
void *dn_bcc_tobuf(lua_State *L, int idx, size_t need, int ro)
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

/* m:tables() -> { name, ... } */
static int l_module_tables(lua_State *L)
{
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
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
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	const struct dn_bpf_table *t = dn_bcc_image_table(m, luaL_checkstring(L, 2));
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
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	int is_key, rc;
	size_t id = table_part(L, m, &is_key);
	const void *val = dn_bcc_tobuf(L, 4, 0, 1);
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
	struct dn_bpf *m = dn_bcc_check_module(L, 1);
	int is_key, rc;
	size_t id = table_part(L, m, &is_key);
	const char *text = luaL_checkstring(L, 4);
	void *out = dn_bcc_tobuf(L, 5, 0, 0);
	struct capture cap;

	/* libbcc complains on stderr; the caller reports the failure */
	dn_bcc_capture_begin(&cap);
	rc = is_key ? bpf_table_key_sscanf(m->mod, id, text, out) : bpf_table_leaf_sscanf(m->mod, id, text, out);
	dn_bcc_capture_drop(&cap);
	if (rc != 0)
		return dn_vm_fail(L, EINVAL, "cannot read '%s' as a %s of this table", text, is_key ? "key" : "leaf");
	lua_pushboolean(L, 1);
	return 1;
}

/* core.map_lookup(fd, key, leaf_out) -> true | false (absent) | nil, msg, errno */
static int l_map_lookup(lua_State *L)
{
	int fd = (int)luaL_checkinteger(L, 1);
	void *k = dn_bcc_tobuf(L, 2, 0, 1), *v = dn_bcc_tobuf(L, 3, 0, 0);

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
	void *k = dn_bcc_tobuf(L, 2, 0, 1), *v = dn_bcc_tobuf(L, 3, 0, 1);
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
	void *k = dn_bcc_tobuf(L, 2, 0, 1);

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

/* clang-format off */
const luaL_Reg dn_bcc_maps_methods[] = {
	{ "tables", l_module_tables },
	{ "table_info", l_module_table_info },
	{ "table_print", l_module_table_print },
	{ "table_scan", l_module_table_scan },
	{ NULL, NULL },
};
const luaL_Reg dn_bcc_maps_fns[] = {
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
