/*
 * dn_records.c - the records C and Lua both read (bpf-src/dn_records.h),
 * as text for Lua's FFI: core.records() returns { name, decl, size } for
 * each, decl being the very declaration C compiled (its DN_* array sizes
 * expanded) and size C's sizeof, which lib/denet/records.lua checks the
 * FFI's layout against; core.record_constants() gives the array sizes.
 *
 * Depends on dn.h (which declares the records for the host) only.
 */
#include "dn.h"

/* a record's fields as one string, their macros (array sizes) expanded
 * first */
#define DN_TEXT_(...) #__VA_ARGS__
#define DN_TEXT(...) DN_TEXT_(__VA_ARGS__)
#define DN_RECORD(name, ...) { #name, "struct " #name " " DN_TEXT(__VA_ARGS__) ";", sizeof(struct name) },

static const struct {
	const char *name, *decl;
	size_t size;
} records[] = {
#include "../bpf-src/dn_records.h"
};

/* the array sizes of dn_records.h, by name */
#define DN_CONST(name)      \
	{                   \
#name, name \
	}
static const struct {
	const char *name;
	long value;
} constants[] = {
	DN_CONST(DN_LEAF_FRAMES), DN_CONST(DN_UT_FRAMES),    DN_CONST(DN_KT_SLOTS),  DN_CONST(DN_KT_INNER),
	DN_CONST(DN_KT_OUTER),    DN_CONST(DN_SNAP_KFRAMES), DN_CONST(DN_PY_FRAMES), DN_CONST(DN_PY_ENTRY),
};

/* core.record_constants() -> { DN_KT_SLOTS = 32, ... } */
static int l_record_constants(lua_State *L)
{
	size_t i;

	lua_createtable(L, 0, (int)(sizeof(constants) / sizeof(constants[0])));
	for (i = 0; i < sizeof(constants) / sizeof(constants[0]); i++) {
		lua_pushinteger(L, constants[i].value);
		lua_setfield(L, -2, constants[i].name);
	}
	return 1;
}

/* core.records() -> { { name =, decl =, size = }, ... } in declaration
 * order (a record is declared after those it holds) */
static int l_records(lua_State *L)
{
	size_t i;

	lua_createtable(L, (int)(sizeof(records) / sizeof(records[0])), 0);
	for (i = 0; i < sizeof(records) / sizeof(records[0]); i++) {
		lua_createtable(L, 0, 3);
		lua_pushstring(L, records[i].name);
		lua_setfield(L, -2, "name");
		lua_pushstring(L, records[i].decl);
		lua_setfield(L, -2, "decl");
		lua_pushinteger(L, (lua_Integer)records[i].size);
		lua_setfield(L, -2, "size");
		lua_rawseti(L, -2, (int)i + 1);
	}
	return 1;
}

void dn_records_open(lua_State *L)
{
	static const luaL_Reg fns[] = {
		{ "records", l_records },
		{ "record_constants", l_record_constants },
		{ NULL, NULL },
	};

	dn_vm_setfuncs(L, fns);
}
