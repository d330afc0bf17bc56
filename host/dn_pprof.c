/*
 * dn_pprof.c - pprof profiles (perftools.profiles.Profile, proto/profile.proto)
 * from Lua tables, packed with protobuf-c and written gzipped.
 *
 * core.pprof_write(path, p): p is
 *   { sample_types = { {type, unit}, ... }, period_type = {type, unit},
 *     period = n, default_sample_type = "type", time_nanos = n,
 *     duration_nanos = n, comments = { "...", ... },
 *     samples = { { stack = { {name, file [, line]}, ... } (leaf first),
 *                   values = { n, ... },
 *                   labels = { {key, str} | {key, num, unit}, ... } }, ... } }
 * Strings are interned into the string table; each distinct (name, file)
 * frame becomes one Function and one Location (symbolized frames: no
 * addresses or mappings).
 *
 * Depends on protobuf-c (the code generated from proto/profile.proto) and
 * zlib.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>

#include "dn.h"
#include "profile.pb-c.h"

typedef Perftools__Profiles__Profile Profile;
typedef Perftools__Profiles__ValueType ValueType;
typedef Perftools__Profiles__Sample Sample;
typedef Perftools__Profiles__Label Label;
typedef Perftools__Profiles__Location Location;
typedef Perftools__Profiles__Line Line;
typedef Perftools__Profiles__Function Function;

/* every allocation of one write, freed together */
struct arena {
	void **blocks;
	size_t n, cap;
	int failed;
};

static void *arena_alloc(struct arena *a, size_t size)
{
	void *p;

	if (a->n == a->cap) {
		size_t nc = a->cap ? a->cap * 2 : 256;
		void **nb = realloc(a->blocks, nc * sizeof(*nb));

		if (!nb) {
			a->failed = 1;
			return NULL;
		}
		a->blocks = nb;
		a->cap = nc;
	}
	p = calloc(1, size ? size : 1);
	if (!p) {
		a->failed = 1;
		return NULL;
	}
	a->blocks[a->n++] = p;
	return p;
}

static void arena_free(struct arena *a)
{
	size_t i;

	for (i = 0; i < a->n; i++)
		free(a->blocks[i]);
	free(a->blocks);
}

/* open-addressing map from a 64-bit key (a hash, checked against the
 * stored value by the caller) to an index */
struct imap {
	uint64_t *keys;
	int64_t *vals;
	size_t cap, n;
};

static uint64_t fnv(const void *p, size_t n, uint64_t h)
{
	const unsigned char *s = p;

	while (n--)
		h = (h ^ *s++) * 1099511628211ULL;
	return h;
}

static int imap_grow(struct imap *m)
{
	size_t nc = m->cap ? m->cap * 2 : 1024, i;
	uint64_t *nk = calloc(nc, sizeof(*nk));
	int64_t *nv = malloc(nc * sizeof(*nv));

	if (!nk || !nv) {
		free(nk);
		free(nv);
		return -1;
	}
	for (i = 0; i < m->cap; i++)
		if (m->keys[i]) {
			size_t j = m->keys[i] & (nc - 1);

			while (nk[j])
				j = (j + 1) & (nc - 1);
			nk[j] = m->keys[i];
			nv[j] = m->vals[i];
		}
	free(m->keys);
	free(m->vals);
	m->keys = nk;
	m->vals = nv;
	m->cap = nc;
	return 0;
}

struct builder {
	struct arena a;
	struct imap strs, funcs;
	char **strings;
	size_t nstrings, capstrings;
	Function **functions;
	Location **locations;
	size_t nfuncs, capfuncs;
};

/* the string table index of s (interned) */
static int64_t intern(struct builder *b, const char *s)
{
	size_t len = strlen(s), j;
	uint64_t h = fnv(s, len, 14695981039346656037ULL) | 1;

	if ((b->strs.n + 1) * 2 > b->strs.cap && imap_grow(&b->strs) < 0) {
		b->a.failed = 1;
		return 0;
	}
	for (j = h & (b->strs.cap - 1); b->strs.keys[j]; j = (j + 1) & (b->strs.cap - 1))
		if (b->strs.keys[j] == h && strcmp(b->strings[b->strs.vals[j]], s) == 0)
			return b->strs.vals[j];
	if (b->nstrings == b->capstrings) {
		size_t nc = b->capstrings ? b->capstrings * 2 : 1024;
		char **ns = realloc(b->strings, nc * sizeof(*ns));

		if (!ns) {
			b->a.failed = 1;
			return 0;
		}
		b->strings = ns;
		b->capstrings = nc;
	}
	b->strings[b->nstrings] = arena_alloc(&b->a, len + 1);
	if (!b->strings[b->nstrings])
		return 0;
	memcpy(b->strings[b->nstrings], s, len + 1);
	b->strs.keys[j] = h;
	b->strs.vals[j] = (int64_t)b->nstrings;
	b->strs.n++;
	return (int64_t)b->nstrings++;
}

/* the location id of frame (name, file, source line: 0 when unknown),
 * made on first sight */
static uint64_t frame_location(struct builder *b, const char *name, const char *file, int64_t lineno)
{
	int64_t ni = intern(b, name), fi = intern(b, file);
	uint64_t h =
	        fnv(&lineno, sizeof(lineno), fnv(&fi, sizeof(fi), fnv(&ni, sizeof(ni), 14695981039346656037ULL))) | 1;
	size_t j;
	Function *f;
	Location *l;
	Line *line;

	if ((b->funcs.n + 1) * 2 > b->funcs.cap && imap_grow(&b->funcs) < 0) {
		b->a.failed = 1;
		return 0;
	}
	for (j = h & (b->funcs.cap - 1); b->funcs.keys[j]; j = (j + 1) & (b->funcs.cap - 1)) {
		f = b->functions[b->funcs.vals[j]];
		if (b->funcs.keys[j] == h && f->name == ni && f->filename == fi &&
		    b->locations[b->funcs.vals[j]]->line[0]->line == lineno)
			return f->id;
	}
	if (b->nfuncs == b->capfuncs) {
		size_t nc = b->capfuncs ? b->capfuncs * 2 : 512;
		Function **nf = realloc(b->functions, nc * sizeof(*nf));
		Location **nl;

		if (!nf) {
			b->a.failed = 1;
			return 0;
		}
		b->functions = nf;
		nl = realloc(b->locations, nc * sizeof(*nl));
		if (!nl) {
			b->a.failed = 1;
			return 0;
		}
		b->locations = nl;
		b->capfuncs = nc;
	}
	f = arena_alloc(&b->a, sizeof(*f));
	l = arena_alloc(&b->a, sizeof(*l));
	line = arena_alloc(&b->a, sizeof(*line));
	if (!f || !l || !line)
		return 0;
	perftools__profiles__function__init(f);
	perftools__profiles__location__init(l);
	perftools__profiles__line__init(line);
	f->id = b->nfuncs + 1;
	f->name = ni;
	f->system_name = ni;
	f->filename = fi;
	line->function_id = f->id;
	line->line = lineno;
	l->id = f->id;
	l->n_line = 1;
	l->line = arena_alloc(&b->a, sizeof(Line *));
	if (!l->line)
		return 0;
	l->line[0] = line;
	b->functions[b->nfuncs] = f;
	b->locations[b->nfuncs] = l;
	b->funcs.keys[j] = h;
	b->funcs.vals[j] = (int64_t)b->nfuncs;
	b->funcs.n++;
	b->nfuncs++;
	return f->id;
}

/* the string at t[i] (a table on top of the stack), or "" */
static const char *field_str(lua_State *L, int t, int i)
{
	const char *s;

	lua_rawgeti(L, t, i);
	s = lua_tostring(L, -1);
	lua_pop(L, 1); /* the table keeps it alive */
	return s ? s : "";
}

static int64_t get_int(lua_State *L, int t, const char *k)
{
	int64_t v;

	lua_getfield(L, t, k);
	v = (int64_t)lua_tonumber(L, -1);
	lua_pop(L, 1);
	return v;
}

static ValueType *value_type(struct builder *b, lua_State *L, int t)
{
	ValueType *vt = arena_alloc(&b->a, sizeof(*vt));

	if (!vt)
		return NULL;
	perftools__profiles__value_type__init(vt);
	vt->type = intern(b, field_str(L, t, 1));
	vt->unit = intern(b, field_str(L, t, 2));
	return vt;
}

static Sample *sample(struct builder *b, lua_State *L, int t)
{
	Sample *s = arena_alloc(&b->a, sizeof(*s));
	int top = lua_gettop(L), sub, i, n;

	if (!s)
		return NULL;
	perftools__profiles__sample__init(s);
	lua_getfield(L, t, "stack");
	sub = lua_gettop(L);
	n = lua_istable(L, sub) ? (int)lua_objlen(L, sub) : 0;
	s->location_id = arena_alloc(&b->a, sizeof(uint64_t) * (size_t)n);
	for (i = 0; i < n && s->location_id; i++) {
		lua_rawgeti(L, sub, i + 1);
		int fr = lua_gettop(L);

		lua_rawgeti(L, fr, 3);
		int64_t lineno = (int64_t)lua_tonumber(L, -1);
		lua_pop(L, 1);
		s->location_id[i] = frame_location(b, field_str(L, fr, 1), field_str(L, fr, 2), lineno);
		lua_pop(L, 1);
	}
	s->n_location_id = (size_t)n;
	lua_settop(L, top);
	lua_getfield(L, t, "values");
	sub = lua_gettop(L);
	n = lua_istable(L, sub) ? (int)lua_objlen(L, sub) : 0;
	s->value = arena_alloc(&b->a, sizeof(int64_t) * (size_t)n);
	for (i = 0; i < n && s->value; i++) {
		lua_rawgeti(L, sub, i + 1);
		s->value[i] = (int64_t)lua_tonumber(L, -1);
		lua_pop(L, 1);
	}
	s->n_value = (size_t)n;
	lua_settop(L, top);
	lua_getfield(L, t, "labels");
	sub = lua_gettop(L);
	n = lua_istable(L, sub) ? (int)lua_objlen(L, sub) : 0;
	s->label = arena_alloc(&b->a, sizeof(Label *) * (size_t)n);
	for (i = 0; i < n && s->label; i++) {
		Label *lb = arena_alloc(&b->a, sizeof(*lb));
		int lt;

		if (!lb)
			break;
		perftools__profiles__label__init(lb);
		lua_rawgeti(L, sub, i + 1);
		lt = lua_gettop(L);
		lb->key = intern(b, field_str(L, lt, 1));
		lua_rawgeti(L, lt, 2);
		if (lua_type(L, -1) == LUA_TNUMBER) {
			lb->num = (int64_t)lua_tonumber(L, -1);
			lb->num_unit = intern(b, field_str(L, lt, 3));
		} else {
			lb->str = intern(b, field_str(L, lt, 2));
		}
		lua_settop(L, sub);
		s->label[i] = lb;
	}
	s->n_label = (size_t)n;
	lua_settop(L, top);
	return s;
}

static int write_gz(const char *path, const uint8_t *buf, size_t len, char *why, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	gzFile gz;
	size_t off = 0;

	if (fd < 0) {
		snprintf(why, n, "cannot write %s: %s", path, strerror(errno));
		return -1;
	}
	gz = gzdopen(fd, "wb9");
	if (!gz) {
		close(fd);
		snprintf(why, n, "cannot write %s: out of memory", path);
		return -1;
	}
	while (off < len) {
		unsigned chunk = len - off > (1u << 30) ? (1u << 30) : (unsigned)(len - off);
		int w = gzwrite(gz, buf + off, chunk);

		if (w <= 0) {
			gzclose(gz);
			snprintf(why, n, "cannot write %s: %s", path, strerror(errno ? errno : EIO));
			return -1;
		}
		off += (size_t)w;
	}
	if (gzclose(gz) != Z_OK) {
		snprintf(why, n, "cannot write %s: %s", path, strerror(errno ? errno : EIO));
		return -1;
	}
	return 0;
}

/* The profile's header fields (table t): sample types, period, times,
 * default sample type, comments. */
static void read_header(lua_State *L, int t, struct builder *b, Profile *p)
{
	int sub, i, n;

	lua_getfield(L, t, "sample_types");
	sub = lua_gettop(L);
	n = lua_istable(L, sub) ? (int)lua_objlen(L, sub) : 0;
	p->sample_type = arena_alloc(&b->a, sizeof(ValueType *) * (size_t)n);
	for (i = 0; i < n && p->sample_type; i++) {
		lua_rawgeti(L, sub, i + 1);
		p->sample_type[i] = value_type(b, L, lua_gettop(L));
		lua_pop(L, 1);
	}
	p->n_sample_type = (size_t)n;
	lua_settop(L, t);

	lua_getfield(L, t, "period_type");
	if (lua_istable(L, -1))
		p->period_type = value_type(b, L, lua_gettop(L));
	lua_settop(L, t);
	p->period = get_int(L, t, "period");
	p->time_nanos = get_int(L, t, "time_nanos");
	p->duration_nanos = get_int(L, t, "duration_nanos");
	lua_getfield(L, t, "default_sample_type");
	if (lua_isstring(L, -1))
		p->default_sample_type = intern(b, lua_tostring(L, -1));
	lua_settop(L, t);

	lua_getfield(L, t, "comments");
	sub = lua_gettop(L);
	n = lua_istable(L, sub) ? (int)lua_objlen(L, sub) : 0;
	p->comment = arena_alloc(&b->a, sizeof(int64_t) * (size_t)n);
	for (i = 0; i < n && p->comment; i++)
		p->comment[i] = intern(b, field_str(L, sub, i + 1));
	p->n_comment = (size_t)n;
	lua_settop(L, t);
}

/* The profile's samples (table t); -1 (nothing raised) with the index of
 * the first that is not a table in *bad. */
static int read_samples(lua_State *L, int t, struct builder *b, Profile *p, int *bad)
{
	int sub, i, n;

	lua_getfield(L, t, "samples");
	sub = lua_gettop(L);
	n = lua_istable(L, sub) ? (int)lua_objlen(L, sub) : 0;
	p->sample = arena_alloc(&b->a, sizeof(Sample *) * (size_t)n);
	for (i = 0; i < n && p->sample; i++) {
		lua_rawgeti(L, sub, i + 1);
		if (!lua_istable(L, -1)) {
			*bad = i + 1;
			lua_settop(L, t);
			return -1;
		}
		p->sample[i] = sample(b, L, lua_gettop(L));
		lua_settop(L, sub);
	}
	p->n_sample = (size_t)n;
	lua_settop(L, t);
	return 0;
}

/* Pack profile p and write it gzipped to path: its packed size, or -1
 * with why. */
static long pack_write(const char *path, struct builder *b, Profile *p, char *why, size_t n)
{
	size_t len;
	uint8_t *buf;
	int rc;

	if (b->a.failed) {
		snprintf(why, n, "pprof: out of memory");
		return -1;
	}
	len = perftools__profiles__profile__get_packed_size(p);
	buf = malloc(len ? len : 1);
	if (!buf) {
		snprintf(why, n, "pprof: out of memory");
		return -1;
	}
	perftools__profiles__profile__pack(p, buf);
	rc = write_gz(path, buf, len, why, n);
	free(buf);
	return rc < 0 ? -1 : (long)len;
}

static void builder_free(struct builder *b)
{
	free(b->strings);
	free(b->functions);
	free(b->locations);
	free(b->strs.keys);
	free(b->strs.vals);
	free(b->funcs.keys);
	free(b->funcs.vals);
	arena_free(&b->a);
}

/* core.pprof_write(path, profile) -> bytes written (uncompressed) | nil, msg */
static int l_pprof_write(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct builder b;
	Profile p = PERFTOOLS__PROFILES__PROFILE__INIT;
	char why[512];
	int bad = 0;
	long len;

	luaL_checktype(L, 2, LUA_TTABLE);
	memset(&b, 0, sizeof(b));
	intern(&b, ""); /* index 0 */
	read_header(L, 2, &b, &p);
	if (read_samples(L, 2, &b, &p, &bad) < 0) {
		builder_free(&b);
		return luaL_error(L, "pprof_write: samples[%d] is not a table", bad);
	}
	p.function = b.functions;
	p.n_function = b.nfuncs;
	p.location = b.locations;
	p.n_location = b.nfuncs;
	p.string_table = b.strings;
	p.n_string_table = b.nstrings;
	len = pack_write(path, &b, &p, why, sizeof(why));
	builder_free(&b);
	if (len < 0)
		return dn_vm_fail(L, EIO, "%s", why);
	lua_pushnumber(L, (lua_Number)len);
	return 1;
}

void dn_pprof_open(lua_State *L)
{
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "pprof_write", l_pprof_write },
		{ NULL, NULL },
	};
	/* clang-format on */

	dn_vm_setfuncs(L, fns);
}
