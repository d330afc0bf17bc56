/*
 * dn_sym.c - addresses to names, for the kernel and for user processes.
 *
 * Kernel: the function symbols of /proc/kallsyms in one sorted array of
 * addresses and one block of names (dn_ksyms_*): 5 MiB and ~40 ms for
 * 120 k symbols, where libbcc's cache of std::strings took 13 MiB and
 * 65 ms.
 * User: a process's executable mappings are captured from /proc/PID/maps
 * (dn_sym_maps_capture) and kept, so stacks of a process that has exited
 * still resolve. Each mapped file's ELF symbol table and load segments are
 * read once through libbcc's ELF helpers (which also follow debuglinks and
 * build-ids to debug files) and shared by every process mapping that file:
 * libc's table is loaded once, not once per pid.
 *
 * An address in a mapping becomes a file offset (addr - start + pgoff),
 * then an ELF virtual address through the PT_LOAD segment holding that
 * offset, and is looked up by binary search among the function symbols.
 * When no symbol covers it the result is module + ELF address, which is
 * what addr2line takes.
 */
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <dwarf.h>
#include <elfutils/debuginfod.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwelf.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <bcc/bcc_elf.h>
#include <bcc/bcc_proc.h>
#include <bcc/bcc_syms.h>

#include "dn.h"

#define KSYMS_MT "denet.ksyms"
#define USYMS_MT "denet.usyms"

struct esym {
	uint64_t start, size;
	char *name;
};

struct eseg {
	uint64_t vaddr, memsz, off;
};

struct elf_tab {
	char *path;
	uint64_t ino;
	int loaded;
	int is_vdso;
	int cfi_tried; /* the call frame information was looked for */
	int cfi_fd;    /* the file it came from (kept open with elf) */
	Elf *cfi_elf;
	Dwarf_CFI *cfi; /* .eh_frame (or .debug_frame) of the file, or NULL */
	struct esym *syms;
	size_t nsyms, csyms;
	struct eseg *segs;
	size_t nsegs;
	struct elf_tab *next;
};

static struct elf_tab *elf_tabs; /* process-wide cache, never freed */

struct mapping {
	uint64_t start, end, pgoff;
	struct elf_tab *tab;
};

struct dn_sym_maps {
	struct mapping *maps;
	size_t n;
};

/* Room for need elements of elem bytes in p (of capacity *cap; the
 * first allocation holds first, and each doubles): the array, moved
 * perhaps, with *cap updated, or NULL (p is left as it was). */
static void *grow(void *p, size_t *cap, size_t need, size_t elem, size_t first)
{
	size_t nc = *cap ? *cap : first;
	void *np;

	if (need <= *cap)
		return p;
	while (nc < need)
		nc *= 2;
	np = realloc(p, nc * elem);
	if (np)
		*cap = nc;
	return np;
}

static int sym_cb(const char *name, uint64_t start, uint64_t size, void *payload)
{
	struct elf_tab *t = payload;

	if (!name || !*name || start == 0)
		return 0;
	struct esym *n = grow(t->syms, &t->csyms, t->nsyms + 1, sizeof(*n), 1024);

	if (!n)
		return -1;
	t->syms = n;
	t->syms[t->nsyms].start = start;
	t->syms[t->nsyms].size = size;
	t->syms[t->nsyms].name = strdup(name);
	if (t->syms[t->nsyms].name)
		t->nsyms++;
	return 0;
}

static int seg_cb(uint64_t vaddr, uint64_t memsz, uint64_t off, void *payload)
{
	struct elf_tab *t = payload;
	struct eseg *n = realloc(t->segs, (t->nsegs + 1) * sizeof(*n));

	if (!n)
		return -1;
	t->segs = n;
	t->segs[t->nsegs].vaddr = vaddr;
	t->segs[t->nsegs].memsz = memsz;
	t->segs[t->nsegs].off = off;
	t->nsegs++;
	return 0;
}

static int esym_cmp(const void *a, const void *b)
{
	const struct esym *x = a, *y = b;

	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	/* prefer the sized symbol among aliases */
	return x->size > y->size ? -1 : x->size < y->size;
}

/* Has the file a symbol table of its own (not stripped)? */
static int has_symtab(Elf *elf)
{
	Elf_Scn *scn = NULL;
	GElf_Shdr sh;

	while ((scn = elf_nextscn(elf, scn)) != NULL)
		if (gelf_getshdr(scn, &sh) && sh.sh_type == SHT_SYMTAB)
			return 1;
	return 0;
}

/* A stripped file with no debug file here: its symbols from a debuginfod
 * server, by build-id, when DEBUGINFOD_URLS names one (libdebuginfod,
 * which keeps what it fetched in its cache). */
static void debuginfod_syms(struct elf_tab *t, struct bcc_symbol_option *opt)
{
	const char *urls = getenv("DEBUGINFOD_URLS");
	unsigned char id[64];
	const void *bid = NULL;
	ssize_t len = 0;
	char *path = NULL;
	Elf *elf;
	int fd;

	if (!urls || !urls[0])
		return;
	elf_version(EV_CURRENT);
	fd = open(t->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
	if (elf && !has_symtab(elf))
		len = dwelf_elf_gnu_build_id(elf, &bid);
	if (len > 0 && (size_t)len <= sizeof(id))
		memcpy(id, bid, (size_t)len);
	if (elf)
		elf_end(elf);
	close(fd);
	if (len <= 0 || (size_t)len > sizeof(id))
		return;
	/* a debug file here (as bcc looks for it by build-id) was read already */
	char local[PATH_MAX];
	int o = snprintf(local, sizeof(local), "/usr/lib/debug/.build-id/%02x/", id[0]);
	for (ssize_t i = 1; i < len && o < (int)sizeof(local) - 8; i++)
		o += snprintf(local + o, sizeof(local) - (size_t)o, "%02x", id[i]);
	snprintf(local + o, sizeof(local) - (size_t)o, ".debug");
	if (access(local, R_OK) == 0)
		return;
	debuginfod_client *c = debuginfod_begin();
	if (!c)
		return;
	fd = debuginfod_find_debuginfo(c, id, (int)len, &path);
	debuginfod_end(c);
	if (fd < 0)
		return;
	close(fd);
	opt->use_debug_file = 0;
	bcc_elf_foreach_sym(path, sym_cb, opt, t);
	free(path);
}

static void tab_load(struct elf_tab *t)
{
	struct bcc_symbol_option opt = {
		.use_debug_file = 1,
		.check_debug_file_crc = 1,
		.lazy_symbolize = 0,
		.use_symbol_type = (1 << 2 /* STT_FUNC */) | (1 << 10 /* STT_GNU_IFUNC */),
	};

	t->loaded = 1;
	if (t->is_vdso) {
		bcc_elf_foreach_vdso_sym(sym_cb, t);
	} else {
		bcc_elf_foreach_sym(t->path, sym_cb, &opt, t);
		bcc_elf_foreach_load_section(t->path, seg_cb, t);
		debuginfod_syms(t, &opt);
	}
	if (t->nsyms)
		qsort(t->syms, t->nsyms, sizeof(*t->syms), esym_cmp);
}

static struct elf_tab *tab_get(const char *path, uint64_t ino)
{
	struct elf_tab *t;

	for (t = elf_tabs; t; t = t->next)
		if (t->ino == ino && strcmp(t->path, path) == 0)
			return t;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->path = strdup(path);
	if (!t->path) {
		free(t);
		return NULL;
	}
	t->ino = ino;
	t->is_vdso = strcmp(path, "[vdso]") == 0;
	t->next = elf_tabs;
	elf_tabs = t;
	return t;
}

struct dn_sym_maps *dn_sym_maps_parse(const char *text)
{
	struct dn_sym_maps *m = calloc(1, sizeof(*m));
	size_t cap = 0;
	const char *line = text;

	if (!m)
		return NULL;
	while (line && *line) {
		const char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		char buf[PATH_MAX + 128], perms[8], dev[16], path[PATH_MAX];
		unsigned long long start, end, pgoff, ino;
		int pos = 0;

		if (len >= sizeof(buf))
			len = sizeof(buf) - 1;
		memcpy(buf, line, len);
		buf[len] = '\0';
		line = nl ? nl + 1 : NULL;
		path[0] = '\0';
		if (sscanf(buf, "%llx-%llx %7s %llx %15s %llu %n", &start, &end, perms, &pgoff, dev, &ino, &pos) < 6)
			continue;
		if (!strchr(perms, 'x'))
			continue;
		if (pos > 0 && (size_t)pos < len)
			snprintf(path, sizeof(path), "%s", buf + pos);
		if (path[0] != '/' && strcmp(path, "[vdso]") != 0)
			continue; /* anonymous code (JIT) has no symbols here */
		struct mapping *nm = grow(m->maps, &cap, m->n + 1, sizeof(*nm), 32);

		if (!nm)
			break;
		m->maps = nm;
		m->maps[m->n].start = start;
		m->maps[m->n].end = end;
		m->maps[m->n].pgoff = pgoff;
		m->maps[m->n].tab = tab_get(path, ino);
		if (m->maps[m->n].tab)
			m->n++;
	}
	return m;
}

struct dn_sym_maps *dn_sym_maps_capture(int pid)
{
	char fn[64], *text = NULL;
	size_t len = 0;
	FILE *f, *mem;
	char buf[8192];
	size_t n;
	struct dn_sym_maps *m;

	snprintf(fn, sizeof(fn), "/proc/%d/maps", pid);
	f = fopen(fn, "re");
	if (!f)
		return NULL;
	mem = open_memstream(&text, &len);
	if (!mem) {
		fclose(f);
		return NULL;
	}
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		fwrite(buf, 1, n, mem);
	fclose(f);
	fclose(mem);
	if (len == 0) {
		/* a zombie or a kernel thread has no mappings */
		free(text);
		errno = ESRCH;
		return NULL;
	}
	m = dn_sym_maps_parse(text);
	free(text);
	return m;
}

void dn_sym_maps_free(struct dn_sym_maps *m)
{
	if (!m)
		return;
	free(m->maps);
	free(m);
}

int dn_sym_maps_resolve(struct dn_sym_maps *m, uint64_t addr, struct dn_sym_result *out)
{
	size_t i, lo, hi;
	struct elf_tab *t;
	uint64_t foff, vaddr;

	out->name = NULL;
	out->module = NULL;
	out->offset = addr;
	for (i = 0; i < m->n; i++)
		if (addr >= m->maps[i].start && addr < m->maps[i].end)
			break;
	if (i == m->n)
		return -1;
	t = m->maps[i].tab;
	if (!t->loaded)
		tab_load(t);
	out->module = t->path;
	foff = addr - m->maps[i].start + m->maps[i].pgoff;
	vaddr = foff;
	if (t->is_vdso) {
		vaddr = addr - m->maps[i].start;
	} else {
		size_t s;

		for (s = 0; s < t->nsegs; s++)
			if (foff >= t->segs[s].off && foff < t->segs[s].off + t->segs[s].memsz) {
				vaddr = foff - t->segs[s].off + t->segs[s].vaddr;
				break;
			}
	}
	out->offset = vaddr;
	/* last symbol starting at or before vaddr */
	lo = 0;
	hi = t->nsyms;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (t->syms[mid].start <= vaddr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo > 0) {
		struct esym *s = &t->syms[lo - 1];

		if (s->size == 0 || vaddr < s->start + s->size) {
			out->name = s->name;
			out->offset = vaddr - s->start;
		}
	}
	return 0;
}

/* --- kernel symbols ------------------------------------------------------ */

struct ksym {
	uint64_t addr;
	uint32_t name; /* offsets into names */
	uint32_t module;
};

struct dn_ksyms {
	struct ksym *syms;
	size_t n, cap;
	char *names;
	size_t len, room;
};

/* Append s (n bytes) and a NUL to k's names; its offset, or UINT32_MAX. */
static uint32_t ksyms_name(struct dn_ksyms *k, const char *s, size_t n)
{
	char *p;

	if (k->len + n + 1 > UINT32_MAX)
		return UINT32_MAX;
	p = grow(k->names, &k->room, k->len + n + 1, 1, 1 << 20);
	if (!p)
		return UINT32_MAX;
	k->names = p;
	memcpy(k->names + k->len, s, n);
	k->names[k->len + n] = '\0';
	k->len += n + 1;
	return (uint32_t)(k->len - n - 1);
}

static int ksym_cmp(const void *a, const void *b)
{
	const struct ksym *x = a, *y = b;

	if (x->addr != y->addr)
		return x->addr < y->addr ? -1 : 1;
	/* aliases: the first in the file (its name was stored first) */
	return x->name < y->name ? -1 : x->name > y->name;
}

/* One line "ADDR TYPE NAME[\t[MODULE]]": 0 kept, 1 skipped, -1 no memory. */
static int ksyms_line(struct dn_ksyms *k, char *line, uint32_t *last_mod)
{
	char *end, *name, *mod;
	uint64_t addr = strtoull(line, &end, 16);
	size_t nlen;

	if (end == line || end[0] != ' ' || end[1] == '\0' || !strchr("tTwW", end[1]) || end[2] != ' ' || !addr)
		return 1;
	name = end + 3;
	nlen = strcspn(name, "\t\n ");
	if (!nlen)
		return 1;
	struct ksym *p = grow(k->syms, &k->cap, k->n + 1, sizeof(*p), 65536);

	if (!p)
		return -1;
	k->syms = p;
	struct ksym *s = &k->syms[k->n];
	s->name = ksyms_name(k, name, nlen);
	s->module = 0; /* "kernel" */
	mod = name + nlen;
	if (mod[0] == '\t' && mod[1] == '[') {
		size_t mlen = strcspn(mod + 2, "]\n");
		/* a module's symbols come together: its name is stored once */
		if (*last_mod && strncmp(k->names + *last_mod, mod + 2, mlen) == 0 && !k->names[*last_mod + mlen])
			s->module = *last_mod;
		else
			s->module = *last_mod = ksyms_name(k, mod + 2, mlen);
	}
	if (s->name == UINT32_MAX || s->module == UINT32_MAX)
		return -1;
	s->addr = addr;
	k->n++;
	return 0;
}

struct dn_ksyms *dn_ksyms_load(const char *path)
{
	struct dn_ksyms *k = calloc(1, sizeof(*k));
	FILE *f = fopen(path, "re");
	char *line = NULL;
	size_t cap = 0;
	uint32_t last_mod = 0;
	int sorted = 1, err = 0;

	if (!k || !f) {
		err = errno;
		goto fail;
	}
	setvbuf(f, NULL, _IOFBF, 1 << 16);
	if (ksyms_name(k, "kernel", 6) != 0) {
		err = ENOMEM;
		goto fail;
	}
	while (getline(&line, &cap, f) > 0) {
		int r = ksyms_line(k, line, &last_mod);

		if (r < 0) {
			err = ENOMEM;
			goto fail;
		}
		if (r == 0 && k->n > 1 && k->syms[k->n - 1].addr < k->syms[k->n - 2].addr)
			sorted = 0;
	}
	if (ferror(f)) {
		err = errno ? errno : EIO;
		goto fail;
	}
	free(line);
	fclose(f);
	/* the core kernel comes sorted; modules may not be */
	if (!sorted)
		qsort(k->syms, k->n, sizeof(*k->syms), ksym_cmp);
	return k;
fail:
	free(line);
	if (f)
		fclose(f);
	dn_ksyms_free(k);
	errno = err;
	return NULL;
}

size_t dn_ksyms_count(const struct dn_ksyms *k)
{
	return k->n;
}

int dn_ksyms_resolve(const struct dn_ksyms *k, uint64_t addr, struct dn_sym_result *out)
{
	size_t lo = 0, hi = k->n;

	/* the last symbol at or below addr (the first of equal ones) */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (k->syms[mid].addr <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return -1;
	while (lo > 1 && k->syms[lo - 2].addr == k->syms[lo - 1].addr)
		lo--;
	const struct ksym *s = &k->syms[lo - 1];
	out->name = k->names + s->name;
	out->module = k->names + s->module;
	out->offset = addr - s->addr;
	return 0;
}

void dn_ksyms_free(struct dn_ksyms *k)
{
	if (!k)
		return;
	free(k->syms);
	free(k->names);
	free(k);
}

/* --- Lua ---------------------------------------------------------------- */

/* The kernel symbol table: freed by the collector, or at exit by the
 * cleanup registry (denet exits without closing the Lua state) */
static void ksyms_release(void *obj)
{
	struct dn_ksyms **ud = obj;

	dn_ksyms_free(*ud);
	*ud = NULL;
}

/*
 * The kernel's symbols read on a thread of their own: parsing
 * /proc/kallsyms (a few hundred thousand lines) takes tens of
 * milliseconds here and a second or more on a slow or busy machine, and
 * a tracer's loop must not stop that long while the processes it follows
 * start and exit. One read at a time; core.ksyms() takes its result.
 */
static struct {
	pthread_t thread;
	int started; /* a thread was started and not yet joined */
	struct dn_ksyms *result;
	int err;
} kread;

static void *ksyms_thread(void *arg)
{
	(void)arg;
	kread.result = dn_ksyms_load("/proc/kallsyms");
	kread.err = kread.result ? 0 : errno;
	return NULL;
}

/* core.ksyms_start() -> true: begin reading the kernel's symbols in the
 * background (no-op when a read is under way); false when no thread
 * could be started (core.ksyms() then reads them itself). */
static int l_ksyms_start(lua_State *L)
{
	sigset_t all, old;
	int rc;

	if (kread.started) {
		lua_pushboolean(L, 1);
		return 1;
	}
	/* (the thread takes no signal: they go to the loop's thread) */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&kread.thread, NULL, ksyms_thread, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	kread.started = rc == 0;
	lua_pushboolean(L, rc == 0);
	return 1;
}

/* core.ksyms() -> kernel symbol table: the background read's (waited
 * for), else read now */
static int l_ksyms(lua_State *L)
{
	struct dn_ksyms **ud = lua_newuserdata(L, sizeof(*ud));
	int err;

	if (kread.started) {
		pthread_join(kread.thread, NULL);
		kread.started = 0;
		*ud = kread.result;
		err = kread.err;
		kread.result = NULL;
	} else {
		*ud = dn_ksyms_load("/proc/kallsyms");
		err = errno;
	}
	if (!*ud)
		return dn_vm_fail(L, err, "cannot read kernel symbols (/proc/kallsyms): %s", strerror(err));
	luaL_getmetatable(L, KSYMS_MT);
	lua_setmetatable(L, -2);
	dn_cleanup_add(ud, ksyms_release);
	return 1;
}

/* ks:resolve(addr) -> name, offset, module | nil */
static int l_ksyms_resolve(lua_State *L)
{
	struct dn_ksyms **ud = luaL_checkudata(L, 1, KSYMS_MT);
	uint64_t addr = dn_vm_checku64(L, 2);
	struct dn_sym_result r;

	if (!*ud || dn_ksyms_resolve(*ud, addr, &r) != 0) {
		lua_pushnil(L);
		return 1;
	}
	lua_pushstring(L, r.name);
	lua_pushnumber(L, (lua_Number)r.offset);
	lua_pushstring(L, r.module);
	return 3;
}

static int l_ksyms_gc(lua_State *L)
{
	void **ud = luaL_checkudata(L, 1, KSYMS_MT);

	if (*ud) {
		dn_cleanup_remove(ud);
		ksyms_release(ud);
	}
	return 0;
}

/* Captured mappings are freed by the collector, or at exit through the
 * cleanup registry (denet exits without closing the Lua state). */
static void usyms_release(void *obj)
{
	struct dn_sym_maps **ud = obj;

	dn_sym_maps_free(*ud);
	*ud = NULL;
}

/* The mapping holding addr and the ELF virtual address it stands for, or
 * NULL. */
static struct mapping *maps_locate(struct dn_sym_maps *m, uint64_t addr, uint64_t *vaddr)
{
	size_t i, s;
	struct elf_tab *t;
	uint64_t foff;

	for (i = 0; i < m->n; i++)
		if (addr >= m->maps[i].start && addr < m->maps[i].end)
			break;
	if (i == m->n)
		return NULL;
	t = m->maps[i].tab;
	if (!t->loaded)
		tab_load(t);
	foff = addr - m->maps[i].start + m->maps[i].pgoff;
	*vaddr = t->is_vdso ? addr - m->maps[i].start : foff;
	for (s = 0; !t->is_vdso && s < t->nsegs; s++)
		if (foff >= t->segs[s].off && foff < t->segs[s].off + t->segs[s].memsz) {
			*vaddr = foff - t->segs[s].off + t->segs[s].vaddr;
			break;
		}
	return &m->maps[i];
}

static Dwarf_CFI *tab_cfi(struct elf_tab *t)
{
	if (t->cfi_tried)
		return t->cfi;
	t->cfi_tried = 1;
	if (t->is_vdso)
		return NULL;
	elf_version(EV_CURRENT);
	t->cfi_fd = open(t->path, O_RDONLY | O_CLOEXEC);
	if (t->cfi_fd < 0)
		return NULL;
	t->cfi_elf = elf_begin(t->cfi_fd, ELF_C_READ_MMAP, NULL);
	if (t->cfi_elf)
		t->cfi = dwarf_getcfi_elf(t->cfi_elf);
	return t->cfi;
}

/* The CFA as an offset from the stack pointer (DWARF register 7 on
 * x86-64), the one rule a function without a frame pointer has. */
static int cfa_from_sp(const Dwarf_Op *ops, size_t n, int64_t *off)
{
	if (n == 1 && ops[0].atom == DW_OP_bregx && ops[0].number == 7) {
		*off = (int64_t)ops[0].number2;
		return 1;
	}
	if (n == 1 && ops[0].atom == DW_OP_breg7) {
		*off = (int64_t)ops[0].number;
		return 1;
	}
	return 0;
}

/* Where the return address (DWARF register 16) is saved, as an offset from
 * the CFA: the rule "offset(N)", which libdw writes as call_frame_cfa,
 * then plus_uconst N (or consts N, plus). */
static int ra_from_cfa(const Dwarf_Op *ops, size_t n, int64_t *off)
{
	if (n == 2 && ops[0].atom == DW_OP_call_frame_cfa && ops[1].atom == DW_OP_plus_uconst) {
		*off = (int64_t)ops[1].number;
		return 1;
	}
	if (n == 3 && ops[0].atom == DW_OP_call_frame_cfa && ops[1].atom == DW_OP_consts && ops[2].atom == DW_OP_plus) {
		*off = (int64_t)ops[1].number;
		return 1;
	}
	return 0;
}

/* us:frame_rule(addr, is_return) -> "unwind", cfa, ra | "stop" | nil
 * How to find the caller of the function executing at addr (a return
 * address when is_return: the call before it is what counts), from the
 * file's call frame information: "unwind" when the frame is found from
 * the stack pointer (CFA = sp + cfa, the return address at CFA + ra), as
 * in a function built without frame pointers; "stop" when the function
 * keeps a frame pointer (the frame pointer walk sees its caller) or the
 * rule is not one of these; nil when addr is in no mapped file or its
 * file has no call frame information for it. */
static int l_usyms_frame_rule(lua_State *L)
{
	struct dn_sym_maps **ud = luaL_checkudata(L, 1, USYMS_MT);
	uint64_t addr = dn_vm_checku64(L, 2), vaddr = 0;
	int is_return = lua_toboolean(L, 3);
	struct mapping *mp = *ud ? maps_locate(*ud, addr, &vaddr) : NULL;
	Dwarf_CFI *cfi = mp ? tab_cfi(mp->tab) : NULL;
	Dwarf_Frame *f = NULL;
	Dwarf_Op *ops, mem[3];
	size_t n;
	int64_t cfa, ra;
	int ok;

	if (!cfi || dwarf_cfi_addrframe(cfi, vaddr - (is_return ? 1 : 0), &f) != 0) {
		lua_pushnil(L);
		return 1;
	}
	ok = dwarf_frame_cfa(f, &ops, &n) == 0 && cfa_from_sp(ops, n, &cfa) &&
	     dwarf_frame_register(f, 16, mem, &ops, &n) == 0 && ra_from_cfa(ops, n, &ra);
	free(f);
	if (!ok) {
		lua_pushliteral(L, "stop");
		return 1;
	}
	lua_pushliteral(L, "unwind");
	lua_pushinteger(L, (lua_Integer)cfa);
	lua_pushinteger(L, (lua_Integer)ra);
	return 3;
}

/* us:srcinfo(addr, is_return) -> { {name, file, line, inlined}, ... }
 * innermost first (see dn_srcline.c) | nil when there is no DWARF for it.
 * A return address is looked up one byte back (the call before it). */
static int l_usyms_srcinfo(lua_State *L)
{
	struct dn_sym_maps **ud = luaL_checkudata(L, 1, USYMS_MT);
	uint64_t addr = dn_vm_checku64(L, 2), vaddr = 0;
	int is_return = lua_toboolean(L, 3), n, i;
	struct mapping *mp = *ud ? maps_locate(*ud, addr, &vaddr) : NULL;
	struct dn_srcframe fr[16];

	if (!mp || mp->tab->is_vdso ||
	    (n = dn_srcline(mp->tab->path, mp->tab->ino, vaddr - (is_return ? 1 : 0), fr, 16)) <= 0) {
		lua_pushnil(L);
		return 1;
	}
	lua_createtable(L, n, 0);
	for (i = 0; i < n; i++) {
		lua_createtable(L, 0, 4);
		if (fr[i].name) {
			lua_pushstring(L, fr[i].name);
			lua_setfield(L, -2, "name");
		}
		if (fr[i].file) {
			lua_pushstring(L, fr[i].file);
			lua_setfield(L, -2, "file");
			lua_pushinteger(L, fr[i].line);
			lua_setfield(L, -2, "line");
		}
		lua_pushboolean(L, fr[i].inlined);
		lua_setfield(L, -2, "inlined");
		lua_rawseti(L, -2, i + 1);
	}
	return 1;
}

/* core.usyms(pid) -> captured mappings | nil, msg, errno */
static int l_usyms(lua_State *L)
{
	int pid = (int)luaL_checkinteger(L, 1);
	struct dn_sym_maps **ud = lua_newuserdata(L, sizeof(*ud));

	*ud = dn_sym_maps_capture(pid);
	if (!*ud)
		return dn_vm_fail(L, errno, "cannot read the mappings of process %d: %s", pid, strerror(errno));
	luaL_getmetatable(L, USYMS_MT);
	lua_setmetatable(L, -2);
	dn_cleanup_add(ud, usyms_release);
	return 1;
}

/* core.usyms_parse(maps_text) -> mappings (tests) */
static int l_usyms_parse(lua_State *L)
{
	const char *text = luaL_checkstring(L, 1);
	struct dn_sym_maps **ud = lua_newuserdata(L, sizeof(*ud));

	*ud = dn_sym_maps_parse(text);
	if (!*ud)
		return luaL_error(L, "out of memory");
	luaL_getmetatable(L, USYMS_MT);
	lua_setmetatable(L, -2);
	dn_cleanup_add(ud, usyms_release);
	return 1;
}

/* us:resolve(addr) -> name|false, offset, module  |  nil (unmapped) */
static int l_usyms_resolve(lua_State *L)
{
	struct dn_sym_maps **ud = luaL_checkudata(L, 1, USYMS_MT);
	uint64_t addr = dn_vm_checku64(L, 2);
	struct dn_sym_result r;

	if (!*ud || dn_sym_maps_resolve(*ud, addr, &r) != 0) {
		lua_pushnil(L);
		return 1;
	}
	if (r.name)
		lua_pushstring(L, r.name);
	else
		lua_pushboolean(L, 0);
	lua_pushnumber(L, (lua_Number)r.offset);
	lua_pushstring(L, r.module);
	return 3;
}

/* us:count() -> number of executable file mappings */
static int l_usyms_count(lua_State *L)
{
	struct dn_sym_maps **ud = luaL_checkudata(L, 1, USYMS_MT);

	lua_pushinteger(L, *ud ? (lua_Integer)(*ud)->n : 0);
	return 1;
}

static int l_usyms_gc(lua_State *L)
{
	struct dn_sym_maps **ud = luaL_checkudata(L, 1, USYMS_MT);

	if (*ud) {
		dn_cleanup_remove(ud);
		usyms_release(ud);
	}
	return 0;
}

/* core.elf_file_offset(path, vaddr) -> offset | nil, msg: where an ELF
 * virtual address (as nm prints it) lies in the file, for uprobes by
 * address. */
static int l_elf_file_offset(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	uint64_t vaddr = dn_vm_checku64(L, 2);
	struct elf_tab *t = tab_get(path, 0);
	size_t i;

	if (!t)
		return luaL_error(L, "out of memory");
	if (!t->loaded)
		tab_load(t);
	for (i = 0; i < t->nsegs; i++)
		if (vaddr >= t->segs[i].vaddr && vaddr < t->segs[i].vaddr + t->segs[i].memsz) {
			lua_pushnumber(L, (lua_Number)(vaddr - t->segs[i].vaddr + t->segs[i].off));
			return 1;
		}
	return dn_vm_fail(L, ENOENT, "address 0x%llx is in no loadable segment of %s", (unsigned long long)vaddr, path);
}

/* --- IFUNC symbols -------------------------------------------------------- */

struct ifunc_find {
	const char *name;
	int found;
};

static int ifunc_cb(const char *name, uint64_t addr, uint64_t size, void *payload)
{
	struct ifunc_find *f = payload;

	(void)addr;
	(void)size;
	if (strcmp(name, f->name) == 0) {
		f->found = 1;
		return -1;
	}
	return 0;
}

/* Is name an IFUNC of the ELF file at path (glibc's strlen, memcpy...)?
 * Its symbol is the resolver, run once at load time: a uprobe there sees
 * no call of the function. */
static int is_ifunc(const char *path, const char *name)
{
	struct bcc_symbol_option opt = {
		.use_debug_file = 0,
		.check_debug_file_crc = 0,
		.lazy_symbolize = 1,
		.use_symbol_type = 1 << 10, /* STT_GNU_IFUNC */
	};
	struct ifunc_find f = { name, 0 };

	bcc_elf_foreach_sym(path, ifunc_cb, &opt, &f);
	return f.found;
}

/* The ELF address of the implementation an IFUNC chose, when the library
 * is loaded in denet too (same file): the resolver ran here on the same
 * CPU as for any traced process. dlopen(RTLD_NOLOAD) runs no code of a
 * library that is not loaded already. Returns 0 and the address, or -1. */
static int ifunc_target(const char *path, const char *name, uint64_t *vaddr)
{
	struct stat a, b;
	void *h, *p;
	Dl_info info;
	int rc = -1;

	h = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
	if (!h)
		return -1;
	p = dlsym(h, name);
	if (p && dladdr(p, &info) && info.dli_fname && info.dli_fbase && stat(path, &a) == 0 &&
	    stat(info.dli_fname, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
		*vaddr = (uint64_t)((uintptr_t)p - (uintptr_t)info.dli_fbase);
		rc = 0;
	}
	dlclose(h);
	return rc;
}

/* core.resolve_symname(binary, symbol, pid [, vaddr]) -> path, file_offset | nil, msg
 * For uprobes: binary may be a path or a library name ("c"). With symbol
 * nil, vaddr (an ELF virtual address, as nm prints it) is translated to
 * its file offset in that binary instead. An IFUNC symbol resolves to the
 * implementation it picks here, or fails saying so. */
static int l_resolve_symname(lua_State *L)
{
	const char *bin = luaL_checkstring(L, 1);
	const char *name = luaL_optstring(L, 2, NULL);
	int pid = (int)luaL_optinteger(L, 3, -1);
	uint64_t vaddr = lua_isnoneornil(L, 4) ? 0 : dn_vm_checku64(L, 4);
	struct bcc_symbol sym;
	struct bcc_symbol_option opt = {
		.use_debug_file = 1,
		.check_debug_file_crc = 1,
		.lazy_symbolize = 1,
		.use_symbol_type = (1 << 2) | (1 << 10),
	};

	char *so = NULL;
	struct stat st;
	int rc;

	if (!name && !vaddr)
		return luaL_error(L, "resolve_symname: give a symbol or an address");
	/* say which is missing: the binary, or the symbol in it */
	if (!strchr(bin, '/')) {
		so = bcc_procutils_which_so(bin, pid > 0 ? pid : 0);
		if (!so)
			so = bcc_procutils_which(bin);
		if (!so)
			return dn_vm_fail(L, ENOENT,
			                  "cannot find library or binary '%s' (not a path, not in the "
			                  "linker cache, not on PATH)",
			                  bin);
	} else if (stat(bin, &st) != 0) {
		return dn_vm_fail(L, errno, "cannot attach to '%s': %s", bin, strerror(errno));
	}
	memset(&sym, 0, sizeof(sym));
	rc = bcc_resolve_symname(so ? so : bin, name, name ? 0 : vaddr, pid > 0 ? pid : 0, &opt, &sym);
	if (so)
		bcc_procutils_free(so);
	if (rc != 0) {
		if (sym.module)
			free((void *)sym.module);
		if (name)
			return dn_vm_fail(L, ENOENT, "cannot find symbol '%s' in '%s'", name, bin);
		return dn_vm_fail(L, ENOENT, "address 0x%llx is in no loadable segment of '%s'",
		                  (unsigned long long)vaddr, bin);
	}
	if (name && is_ifunc(sym.module, name)) {
		uint64_t impl_addr;
		struct bcc_symbol isym;

		memset(&isym, 0, sizeof(isym));
		if (ifunc_target(sym.module, name, &impl_addr) != 0 ||
		    bcc_resolve_symname(sym.module, NULL, impl_addr, 0, &opt, &isym) != 0) {
			lua_pushnil(L);
			lua_pushfstring(L,
			                "%s in %s is an IFUNC: its symbol is the resolver that picks an "
			                "implementation at load time, and denet cannot tell which one without "
			                "loading the library; probe the implementation by name (nm -D %s)",
			                name, sym.module, sym.module);
			free((void *)sym.module);
			if (isym.module)
				free((void *)isym.module);
			return 2;
		}
		free((void *)isym.module);
		sym.offset = isym.offset;
		lua_pushstring(L, sym.module);
		lua_pushnumber(L, (lua_Number)sym.offset);
		free((void *)sym.module);
		return 2;
	}
	lua_pushstring(L, sym.module);
	lua_pushnumber(L, (lua_Number)sym.offset);
	free((void *)sym.module);
	return 2;
}

void dn_sym_open(lua_State *L)
{
	static const luaL_Reg kmethods[] = { { "resolve", l_ksyms_resolve }, { NULL, NULL } };
	/* clang-format off */
	static const luaL_Reg umethods[] = {
		{ "resolve", l_usyms_resolve },
		{ "frame_rule", l_usyms_frame_rule },
		{ "srcinfo", l_usyms_srcinfo },
		{ "count", l_usyms_count },
		{ NULL, NULL },
	};
	/* clang-format on */

	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "ksyms", l_ksyms },
		{ "ksyms_start", l_ksyms_start },
		{ "usyms", l_usyms },
		{ "usyms_parse", l_usyms_parse },
		{ "resolve_symname", l_resolve_symname },
		{ "elf_file_offset", l_elf_file_offset },
		{ NULL, NULL },
	};
	/* clang-format on */

	dn_vm_newclass(L, KSYMS_MT, l_ksyms_gc, kmethods);
	dn_vm_newclass(L, USYMS_MT, l_usyms_gc, umethods);
	dn_vm_setfuncs(L, fns);
}
