/*
 * dn_bcc.h - what the parts of the libbcc binding share (not for the rest
 * of the host): the module object, libbcc.so's compiler functions
 * (resolved when first needed), stderr capture, and each part's Lua
 * functions. The parts: dn_bcc.c (the module's life, the compiler's
 * library, registration), dn_bcc_compile.c (compiling C into a module
 * and its image), dn_bcc_load.c (images: loading functions, the compile
 * cache, task iterators), dn_bcc_attach.c (attaching and detaching) and
 * dn_bcc_maps.c (tables and map calls).
 */
#ifndef DN_BCC_H
#define DN_BCC_H

#include <pthread.h>
#include <stdio.h>

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

/* libbcc.so's functions, resolved by dn_bcc_compiler(); each name below
 * calls through its pointer */
#define X(f) extern __typeof__(&f) dn_bcc_p_##f;
DN_BCC_FNS(X)
#undef X
/* Open libbcc.so once; 0, or -1 with the reason pushed as a string. */
int dn_bcc_compiler(lua_State *L);
#define DN_BCC(f) (*dn_bcc_p_##f)
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
/* a function's instruction that loads a map's fd */
#define IS_MAP_LOAD(i) ((i)->code == (BPF_LD | BPF_IMM | BPF_DW) && (i)->src_reg == BPF_PSEUDO_MAP_FD)
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

/* stderr captured into a memfd while libbcc writes to it (compile and
 * verifier errors, complaints about a failed attach) */
struct capture {
	int saved;
	int mfd;
};
void dn_bcc_capture_begin(struct capture *c);
/* Restore stderr and push what was written meanwhile (a string). */
void dn_bcc_capture_end(lua_State *L, struct capture *c);
/* Restore stderr and drop what was written. */
void dn_bcc_capture_drop(struct capture *c);

/* The module at idx (raises when it is not one, or closed). */
struct dn_bpf *dn_bcc_check_module(lua_State *L, int idx);
/* A new, empty module userdata, pushed. */
struct dn_bpf *dn_bcc_new_module(lua_State *L);
/* Release everything a module holds (detached first); idempotent. */
void dn_bcc_module_release(void *obj);
/* Detach one attachment now. */
void dn_bcc_detach_one(struct dn_att *a);
/* Detach every attachment (perf events closed in parallel), and wait. */
void dn_bcc_detach_start(struct dn_bpf *m);
void dn_bcc_detach_finish(struct dn_bpf *m);
/* A buffer argument: cdata (its payload) or, read-only, a string of at
 * least `need` bytes. */
void *dn_bcc_tobuf(lua_State *L, int idx, size_t need, int ro);
/* The image's function or table of that name, or NULL; a function's
 * instructions. */
struct dn_bpf_func *dn_bcc_image_func(struct dn_bpf *m, const char *name);
struct dn_bpf_table *dn_bcc_image_table(struct dn_bpf *m, const char *name);
struct bpf_insn *dn_bcc_image_code(struct dn_bpf *m, const struct dn_bpf_func *f);
/* Describe a freshly compiled module in m->img (dn_bcc_compile.c). */
int dn_bcc_image_from_module(struct dn_bpf *m);

/* each part's module methods and denet.core functions */
extern const luaL_Reg dn_bcc_compile_methods[], dn_bcc_compile_fns[];
extern const luaL_Reg dn_bcc_load_methods[], dn_bcc_load_fns[];
extern const luaL_Reg dn_bcc_attach_methods[];
extern const luaL_Reg dn_bcc_maps_methods[], dn_bcc_maps_fns[];

#endif
