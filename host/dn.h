/*
 * dn.h - what the host's C files share.
 *
 * The host is split by subsystem, one file and one prefix each:
 *   dn_vm_*    Lua state, paths, protected calls, error reporting (dn_vm.c)
 *   dn_bcc_*   libbcc modules, program loading, attaching, maps (dn_bcc.c)
 *   dn_loop_*  the event loop: buffers, timers, children, signals (dn_loop.c)
 *   dn_proc_*  held spawn, wait, kill (dn_proc.c)
 *   dn_procfs_* fast /proc readers for the monitor (dn_procfs.c)
 *   dn_sym_*   kernel and user symbol resolution (dn_sym.c)
 *   dn_sys_*   clocks, privileges and machine probes for `doctor` (dn_sys.c)
 *   dn_feat_*  what the running kernel's BPF can do (dn_feat.c)
 *   dn_json_*  the JSON encoding of every record (dn_json.c)
 *   dn_trust_* what a privileged denet agrees to load, and Lua's loaders
 *              that read exactly what was checked (dn_trust.c)
 * Each subsystem exposes its Lua functions by adding them to the table on
 * top of the stack in dn_*_open(); together they form the `denet.core`
 * module that the Lua files in lib/denet/ wrap. Lua code never calls libbcc through the
 * FFI: every libbcc prototype is checked by the C compiler here.
 */
#ifndef DN_H
#define DN_H

#include <stddef.h>
#include <stdint.h>
#include <signal.h>

#include <lua.h>
#include <lauxlib.h>

#define DN_ERRBUF 512

/* dn_vm.c ---------------------------------------------------------------- */

/* Directory holding lib/, scripts/ and bpf-src/; resolved once at start. */
const char *dn_vm_root(void);
/* Create the Lua state with the standard libraries, package paths pointing
 * into dn_vm_root() and `denet.core` preloaded. NULL when out of memory. */
lua_State *dn_vm_new(void);
/* lua_pcall with a traceback handler; on error the message (with traceback,
 * unless the error is a denet user error) is left on the stack. */
int dn_vm_pcall(lua_State *L, int nargs, int nresults);
/* Print the error on top of the stack the way users should see it and
 * return the process exit code it maps to (user error: its code, usually
 * 2; interrupt: 128+signal; script bug: 1). Pops it. */
int dn_vm_report(lua_State *L);
/* Add the functions of fns (NULL-terminated) to the table on top. */
void dn_vm_setfuncs(lua_State *L, const luaL_Reg *fns);
/* Register a userdata class: metatable `name` with __gc and methods as
 * __index. Leaves the stack as it was. */
void dn_vm_newclass(lua_State *L, const char *name, lua_CFunction gc, const luaL_Reg *methods);
/* A 64-bit address argument: a Lua number or a 64-bit integer cdata. */
uint64_t dn_vm_checku64(lua_State *L, int idx);
/* Push a user error (one line for the user, exit code `code`): a table
 * { denet_error = true, message, code [, where] } whose tostring is
 * "where: message" (or the message), and that concatenates and answers
 * string methods (err:match(...)) as that text. */
void dn_vm_user_error(lua_State *L, const char *message, int code);
/* Push a userdata-free argument error helper result: nil, message, errno.
 * Returns 3 (the number of values pushed). */
int dn_vm_fail(lua_State *L, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* dn_trust.c ------------------------------------------------------------- */

/* Decide the policy once: enforced when the process is privileged (euid 0
 * or any effective capability); trusted owners are root and the invoking
 * user (SUDO_UID under sudo, else the real uid). allow_untrusted: the
 * user's --allow-untrusted. */
void dn_trust_init(int allow_untrusted);
/* Are ownership and mode checks applied (privileged and not allowed)? */
int dn_trust_enforced(void);
/* --allow-untrusted from here on (or not). */
void dn_trust_allow(int allow);
/* Open the regular file at path for reading after judging it and every
 * directory above it (see dn_trust.c). Returns the descriptor (the caller
 * owns it) or -errno: -EPERM when refused, with the reason and its fix in
 * why; -EAGAIN when it changed during the check. */
int dn_trust_open(const char *path, char *why, size_t n);
/* Judge the directory at path the same way; 0 or -errno as above. */
int dn_trust_dir(const char *path, char *why, size_t n);
/* dn_trust_open, then read it all into *buf (malloc'd; the caller frees). */
int dn_trust_read(const char *path, char **buf, size_t *len, char *why, size_t n);
/* Clean package.path/cpath and replace Lua's file searchers, loadfile,
 * dofile and package.loadlib with ones that go through dn_trust_open. */
void dn_trust_install(lua_State *L);

/* dn_loop.c -------------------------------------------------------------- */

/* How deep loop_poll may nest (a callback that waits runs the loop inside
 * the loop): the outer run, and three waiting callbacks inside it. */
#define DN_LOOP_MAX_DEPTH 4

/* The signal received and not yet handled, 0 when none. */
extern volatile sig_atomic_t dn_loop_signal_pending;
/* si_code of that signal (SI_KERNEL when the terminal sent it). */
extern volatile sig_atomic_t dn_loop_signal_code;
/* Install SIGINT/SIGTERM/SIGHUP handlers that wake the loop or, when Lua
 * code is running, interrupt it through a hook. Call once, after dn_vm_new. */
int dn_loop_init(lua_State *L);
/* The eventfd a signal writes to (readable while one is pending). */
int dn_loop_wakefd(void);
/* Release every loop source (buffers, timers); idempotent. */
void dn_loop_shutdown(void);

/* Resources that must be released on every exit path register a release
 * function here; dn_cleanup_run() calls them all (also from atexit). */
typedef void (*dn_cleanup_fn)(void *obj);
void dn_cleanup_add(void *obj, dn_cleanup_fn fn);
void dn_cleanup_remove(void *obj);
void dn_cleanup_run(void);

/* dn_procfs.c: one process's figures, and the parsers of its /proc files
 * (exposed for the fuzz targets in tests/fuzz) ------------------------------ */

/* The records whose bytes C and Lua both read (struct dn_psample among
 * them), declared once in bpf-src/dn_records.h with the kernel's integer
 * names; dn_records.c hands the same declarations to Lua's FFI. */
typedef uint8_t u8;
typedef int8_t s8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int32_t s32;
#define DN_RECORD(name, ...) struct name __VA_ARGS__;
#include "../bpf-src/dn_records.h"
#undef DN_RECORD

enum {
	DN_PS_GONE = 1,     /* the process no longer exists */
	DN_PS_IO = 2,       /* io fields are valid */
	DN_PS_PSS = 4,      /* pss_kb is valid */
	DN_PS_CTXSW = 8,    /* nvcsw/nivcsw are valid */
	DN_PS_SKIPPED = 16, /* not read this time (only pid is set) */
};

/* /proc/PID/stat text into s (comm, state, ppid, faults, times, threads,
 * starttime, vsize, rss, processor): 0, or -1 when it is not stat text. */
int dn_procfs_parse_stat(const char *buf, struct dn_psample *s);
/* /proc/PID/io text into s's I/O fields */
void dn_procfs_parse_io(const char *buf, struct dn_psample *s);
/* /proc/PID/status text into s's context switch counts */
void dn_procfs_parse_status(const char *buf, struct dn_psample *s);
/* /proc/PID/net/dev text: bytes received and sent on every interface but
 * loopback (buf is modified) */
void dn_procfs_parse_netdev(char *buf, unsigned long long *rx, unsigned long long *tx);

/* registration of each subsystem's Lua functions into `denet.core` */
void dn_bcc_open(lua_State *L);

/* dn_bpfcache.c ---------------------------------------------------------- */

/* A compiled BPF program as the cache keeps it. In an image taken from a
 * compile, a function's map references (BPF_PSEUDO_MAP_FD loads) hold the
 * table's index; loading puts the table's descriptor there. */
struct dn_bpf_table {
	char *name;
	int fd; /* -1 until created */
	uint32_t type, key_size, leaf_size, max_entries, flags;
	uint32_t btf_key, btf_value; /* BTF type ids, 0 without */
	char *key_desc, *leaf_desc;  /* libbcc's JSON descriptions */
	char **fields;               /* the record type's fields ("u32 pid") */
	uint32_t nfields;
};
struct dn_bpf_func {
	char *name;
	unsigned char *code;
	size_t len; /* bytes */
};
struct dn_bpf_image {
	char *license;
	uint32_t kern_version;
	void *btf;
	size_t btf_len;
	struct dn_bpf_table *tabs;
	uint32_t ntabs;
	struct dn_bpf_func *fns;
	uint32_t nfns;
};
enum { DN_CACHE_ABSENT = 1, DN_CACHE_DAMAGED, DN_CACHE_OTHER, DN_CACHE_REFUSED };
/* FNV-1a over n bytes, continuing from h (0 starts). */
uint64_t dn_fnv64(const void *p, size_t n, uint64_t h);
/* Write the entry atomically (temporary file, rename); 0 or -1 with why. */
int dn_bpfcache_write(const char *path, const char *key, const char *label, const struct dn_bpf_image *img, char *why,
                      size_t n);
/* Decode an entry held in memory: 0, or DN_CACHE_DAMAGED/OTHER with why.
 * key NULL accepts any key; label (may be NULL) gets the entry's label. */
int dn_bpfcache_parse(const void *buf, size_t len, const char *key, struct dn_bpf_image *img, char **label, char *why,
                      size_t n);
/* Read and decode the entry at path: 0 or a DN_CACHE_* reason. */
int dn_bpfcache_read(const char *path, const char *key, struct dn_bpf_image *img, char **label, char *why, size_t n);
void dn_bpf_image_free(struct dn_bpf_image *img);
void dn_loop_open(lua_State *L);
void dn_proc_open(lua_State *L);
/* Raise the open-file limit to its hard limit (the monitor holds several
 * fds per watched process); commands denet starts get the limit it had. */
void dn_proc_raise_nofile(void);
void dn_procfs_open(lua_State *L);
void dn_sym_open(lua_State *L);
void dn_sys_open(lua_State *L);
void dn_repl_open(lua_State *L);
void dn_trust_open_lua(lua_State *L);
void dn_feat_open(lua_State *L);
void dn_json_open(lua_State *L);
void dn_usdt_open(lua_State *L);
void dn_http_open(lua_State *L);
void dn_pprof_open(lua_State *L);
void dn_records_open(lua_State *L);
void dn_unwind_open(lua_State *L);

/* dn_srcline.c: source lines and inlined functions ----------------------- */

struct dn_srcframe {
	const char *name; /* the function (C++: mangled); NULL: unknown */
	const char *file; /* its source file, or NULL */
	int line;
	int inlined; /* inlined into the next frame */
};
/* The frames at file address vaddr of the file at path (inode ino: files
 * are opened once), innermost first, into out (at most max): the
 * functions inlined there, then the one they are inlined into. Returns
 * how many (0: no DWARF for it). The strings live as long as the process. */
int dn_srcline(const char *path, uint64_t ino, uint64_t vaddr, struct dn_srcframe *out, int max);

/* dn_unwind.c: unwind tables from call frame information ---------------- */

#include <libelf.h>
/* The rows of elf's .eh_frame (or .debug_frame), sorted and merged, into
 * *rows (malloc'd, NULL when there are none; the caller frees) and *n: 0;
 * or -1 with why. */
int dn_uw_build_elf(Elf *elf, struct dn_uw_row **rows, size_t *n, char *why, size_t wn);

/* dn_sym.c: the user-space resolver, also used by C unit tests ----------- */

struct dn_sym_maps; /* a process's executable mappings, captured once */
struct dn_sym_result {
	const char *name;   /* symbol, or NULL when none covers the address */
	const char *module; /* mapped file path, or NULL when unmapped */
	uint64_t offset;    /* from the symbol start, or from the module's
	                         ELF base when name is NULL */
};
/* Read /proc/PID/maps now. NULL with errno set when the process is gone. */
struct dn_sym_maps *dn_sym_maps_capture(int pid);
/* Same, from a maps text (for tests). */
struct dn_sym_maps *dn_sym_maps_parse(const char *text);
void dn_sym_maps_free(struct dn_sym_maps *m);
/* Resolve addr in the captured mappings; 0 when a mapping covers it. The
 * strings stay valid until dn_sym_maps_free / process exit (the per-file
 * symbol tables are shared and cached for the life of the process). */
int dn_sym_maps_resolve(struct dn_sym_maps *m, uint64_t addr, struct dn_sym_result *out);

/* The kernel's function symbols from a kallsyms file (/proc/kallsyms),
 * kept compact: one sorted array of addresses and one block of names.
 * NULL with errno set when the file cannot be read. A file whose
 * addresses are all hidden (kptr_restrict) gives an empty table. */
struct dn_ksyms;
struct dn_ksyms *dn_ksyms_load(const char *path);
size_t dn_ksyms_count(const struct dn_ksyms *k);
/* The symbol at or below addr: 0 and out filled (module "kernel" or the
 * module's name), -1 when addr is below every symbol. */
int dn_ksyms_resolve(const struct dn_ksyms *k, uint64_t addr, struct dn_sym_result *out);
void dn_ksyms_free(struct dn_ksyms *k);

#endif
