/*
 * dn_json.c - every record denet writes, encoded in one place.
 *
 * Numbers: integral values are written as integers, exactly (counters of
 * bytes and nanoseconds pass 2^53 and must not turn into "9.0e+15", which
 * strict readers with integer fields reject); others with 14 significant
 * digits; NaN and infinities as null. Tables: a sequence 1..n is an array,
 * anything else an object; an empty table is an object unless its
 * metatable says `__jsontype = "array"` (json.array()). 64-bit integer
 * cdata are written as unsigned. The monitor's hot path, the children of a
 * tree record, is joined here from cached text (json_children).
 *
 * Depends on LuaJIT's C API only.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dn.h"

#define MAX_DEPTH 64
#define LUA_TCDATA 10 /* LuaJIT's type tag for cdata (lua.h does not name it) */

/* One number as JSON into buf (at least 32 bytes). */
static void json_number(char *buf, size_t n, double v)
{
	if (isnan(v) || isinf(v))
		snprintf(buf, n, "null");
	else if (v == floor(v) && fabs(v) < 9.2e18)
		snprintf(buf, n, "%lld", (long long)v);
	else
		snprintf(buf, n, "%.14g", v);
}

/* A growable text buffer of our own: luaL_Buffer keeps pieces on the Lua
 * stack, which the encoder also uses as it walks tables. */
struct jbuf {
	char *p;
	size_t len, cap;
	char err[160]; /* set on failure; the caller raises it after freeing */
};

static int jb_add(struct jbuf *b, const char *s, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *np;

		while (cap < b->len + n)
			cap *= 2;
		np = realloc(b->p, cap);
		if (!np) {
			snprintf(b->err, sizeof(b->err), "json: out of memory");
			return -1;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return 0;
}

static int jb_str(struct jbuf *b, const char *s)
{
	return jb_add(b, s, strlen(s));
}

static int add_string(struct jbuf *b, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, run = 0;
	char esc[8];

	if (jb_add(b, "\"", 1))
		return -1;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		const char *e = NULL;

		switch (c) {
		case '"':
			e = "\\\"";
			break;
		case '\\':
			e = "\\\\";
			break;
		case '\n':
			e = "\\n";
			break;
		case '\r':
			e = "\\r";
			break;
		case '\t':
			e = "\\t";
			break;
		case '\b':
			e = "\\b";
			break;
		case '\f':
			e = "\\f";
			break;
		default:
			if (c < 0x20 || c == 0x7f) {
				snprintf(esc, sizeof(esc), "\\u00%c%c", hex[c >> 4], hex[c & 15]);
				e = esc;
			}
		}
		if (e) {
			/* the plain run before it, then the escape */
			if (jb_add(b, s + i - run, run) || jb_str(b, e))
				return -1;
			run = 0;
		} else {
			run++;
		}
	}
	if (jb_add(b, s + len - run, run))
		return -1;
	return jb_add(b, "\"", 1);
}

/* Is the table at idx marked as an array (its metatable's __jsontype)? */
static int marked_array(lua_State *L, int idx)
{
	int yes = 0;

	if (lua_getmetatable(L, idx)) {
		lua_getfield(L, -1, "__jsontype");
		yes = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "array") == 0;
		lua_pop(L, 2);
	}
	return yes;
}

/* The length of the table at idx if it is a sequence 1..n, else -1. */
static int sequence_len(lua_State *L, int idx)
{
	int n = 0, max = 0;

	lua_pushnil(L);
	while (lua_next(L, idx)) {
		double k;

		lua_pop(L, 1);
		if (lua_type(L, -1) != LUA_TNUMBER) {
			lua_pop(L, 1);
			return -1;
		}
		k = lua_tonumber(L, -1);
		if (k < 1 || k != floor(k) || k > 1e9) {
			lua_pop(L, 1);
			return -1;
		}
		if (k > max)
			max = (int)k;
		n++;
	}
	return n == max ? n : -1;
}

static int encode(lua_State *L, struct jbuf *b, int idx, int depth);

/* Encode the sequence of n items of the table at idx as an array. */
static int encode_array(lua_State *L, struct jbuf *b, int idx, int n, int depth)
{
	int i;

	if (jb_add(b, "[", 1))
		return -1;
	for (i = 1; i <= n; i++) {
		int rc;

		if (i > 1 && jb_add(b, ",", 1))
			return -1;
		lua_rawgeti(L, idx, i);
		rc = encode(L, b, lua_gettop(L), depth + 1);
		lua_pop(L, 1);
		if (rc)
			return -1;
	}
	return jb_add(b, "]", 1);
}

/* Encode the key at index k (a string, or a number written as one). */
static int encode_key(lua_State *L, struct jbuf *b, int k)
{
	char num[48];
	size_t len;

	if (lua_type(L, k) == LUA_TSTRING) {
		const char *s = lua_tolstring(L, k, &len);

		return add_string(b, s, len);
	}
	if (lua_type(L, k) == LUA_TNUMBER) {
		json_number(num, sizeof(num), lua_tonumber(L, k));
		return add_string(b, num, strlen(num));
	}
	snprintf(b->err, sizeof(b->err), "json: cannot use a %s as an object key", luaL_typename(L, k));
	return -1;
}

/* Encode the table at idx as an object. */
static int encode_object(lua_State *L, struct jbuf *b, int idx, int depth)
{
	int first = 1;

	if (jb_add(b, "{", 1))
		return -1;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		/* stack: key, value */
		int top = lua_gettop(L);

		if ((!first && jb_add(b, ",", 1)) || encode_key(L, b, top - 1) || jb_add(b, ":", 1) ||
		    encode(L, b, top, depth + 1)) {
			lua_pop(L, 2);
			return -1;
		}
		first = 0;
		lua_pop(L, 1);
	}
	return jb_add(b, "}", 1);
}

/* Encode the value at absolute index idx; 0, or -1 with b->err set. */
static int encode(lua_State *L, struct jbuf *b, int idx, int depth)
{
	char num[48];
	int n;

	switch (lua_type(L, idx)) {
	case LUA_TNIL:
	case LUA_TLIGHTUSERDATA: /* cjson.null */
		return jb_str(b, "null");
	case LUA_TBOOLEAN:
		return jb_str(b, lua_toboolean(L, idx) ? "true" : "false");
	case LUA_TNUMBER:
		json_number(num, sizeof(num), lua_tonumber(L, idx));
		return jb_str(b, num);
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);

		return add_string(b, s, len);
	}
	case LUA_TCDATA:
		snprintf(num, sizeof(num), "%llu", (unsigned long long)*(const uint64_t *)lua_topointer(L, idx));
		return jb_str(b, num);
	case LUA_TTABLE:
		break;
	default:
		snprintf(b->err, sizeof(b->err), "json: cannot encode a %s", luaL_typename(L, idx));
		return -1;
	}
	if (depth > MAX_DEPTH) {
		snprintf(b->err, sizeof(b->err), "json: nested deeper than %d (a cycle?)", MAX_DEPTH);
		return -1;
	}
	n = sequence_len(L, idx);
	if (n > 0 || (n == 0 && marked_array(L, idx)))
		return encode_array(L, b, idx, n, depth);
	return encode_object(L, b, idx, depth);
}

/* core.json_encode(value) -> text */
static int l_json_encode(lua_State *L)
{
	struct jbuf b = { NULL, 0, 0, "" };
	int rc;

	luaL_checkany(L, 1);
	lua_settop(L, 1);
	rc = encode(L, &b, 1, 0);
	if (rc) {
		/* free first: luaL_error does not return */
		free(b.p);
		lua_pushstring(L, b.err);
		return lua_error(L);
	}
	lua_pushlstring(L, b.p ? b.p : "", b.len);
	free(b.p);
	return 1;
}

/* core.json_children(prefixes, cpus, uptimes, n, ts_ms [, tail]) -> '[...]'
 * The monitor's hot path: join n children as JSON, each its cached text up
 * to the metrics' changing fields, then ts_ms, cpu_usage, uptime_secs and
 * tail (more fields the children share, starting with a comma). */
static int l_json_children(lua_State *L)
{
	int n = (int)luaL_checkinteger(L, 4);
	double ts = luaL_checknumber(L, 5);
	const char *tail = luaL_optstring(L, 6, "");
	luaL_Buffer b;
	char num[200], t[48], c[48], u[48];
	int i;

	luaL_checktype(L, 1, LUA_TTABLE);
	luaL_checktype(L, 2, LUA_TTABLE);
	luaL_checktype(L, 3, LUA_TTABLE);
	json_number(t, sizeof(t), ts);
	luaL_buffinit(L, &b);
	luaL_addchar(&b, '[');
	for (i = 1; i <= n; i++) {
		double cpu, up;

		if (i > 1)
			luaL_addchar(&b, ',');
		lua_rawgeti(L, 2, i);
		cpu = lua_tonumber(L, -1);
		lua_rawgeti(L, 3, i);
		up = lua_tonumber(L, -1);
		lua_pop(L, 2);
		lua_rawgeti(L, 1, i);
		luaL_addvalue(&b);
		json_number(c, sizeof(c), cpu);
		json_number(u, sizeof(u), up);
		snprintf(num, sizeof(num), "\"ts_ms\":%s,\"cpu_usage\":%s,\"uptime_secs\":%s", t, c, u);
		luaL_addstring(&b, num);
		luaL_addstring(&b, tail);
		luaL_addstring(&b, "}}");
	}
	luaL_addchar(&b, ']');
	luaL_pushresult(&b);
	return 1;
}

void dn_json_open(lua_State *L)
{
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "json_encode", l_json_encode },
		{ "json_children", l_json_children },
		{ NULL, NULL },
	};
	/* clang-format on */
	dn_vm_setfuncs(L, fns);
}
