/*
 * test_host.c - C unit tests of the host: the user symbol resolver on a
 * fixture binary (names, offsets, shared tables, unmapped addresses,
 * paths with spaces), the kernel symbol table on a made-up kallsyms and on
 * the running kernel's, the cleanup registry's order, and compile cache
 * entries (a round trip, the key compared whole, a damaged payload).
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dn.h"

static int failures;

#define CHECK(cond, ...)                                                                         \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			failures++;                                                              \
			fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                            \
			fputc('\n', stderr);                                                     \
		}                                                                                \
	} while (0)

/* ELF address of a symbol, read with nm (independent of the resolver) */
static uint64_t nm_addr(const char *bin, const char *sym)
{
	char cmd[1024], line[256];
	uint64_t a = 0;
	FILE *p;

	snprintf(cmd, sizeof(cmd), "nm '%s'", bin);
	p = popen(cmd, "r");
	if (!p)
		return 0;
	while (fgets(line, sizeof(line), p)) {
		char name[200], type;
		unsigned long long v;

		if (sscanf(line, "%llx %c %199s", &v, &type, name) == 3 && strcmp(name, sym) == 0)
			a = v;
	}
	pclose(p);
	return a;
}

static void test_resolver(const char *fixtures)
{
	char bin[512], maps[2048];
	uint64_t fn, base = 0x555555554000ull;
	struct dn_sym_maps *m, *m2;
	struct dn_sym_result r, r2;
	const char *first_name;

	snprintf(bin, sizeof(bin), "%s/ufunc", fixtures);
	fn = nm_addr(bin, "dn_target_fn");
	CHECK(fn != 0, "nm found no dn_target_fn in %s", bin);
	/* a PIE mapped as the kernel maps it: headers r--p, text r-xp with
	 * file offset == ELF address for the fixture's text segment */
	snprintf(maps, sizeof(maps),
	         "%llx-%llx r--p 00000000 fe:01 4242 %s\n"
	         "%llx-%llx r-xp 00001000 fe:01 4242 %s\n"
	         "7f0000000000-7f0000001000 r-xp 00000000 00:00 0 \n"
	         "7ffff7fc1000-7ffff7fc3000 r-xp 00000000 00:00 0 [vdso]\n",
	         (unsigned long long)base, (unsigned long long)base + 0x1000, bin, (unsigned long long)base + 0x1000,
	         (unsigned long long)base + 0x2000, bin);
	m = dn_sym_maps_parse(maps);
	CHECK(m != NULL, "parse failed");
	CHECK(dn_sym_maps_resolve(m, base + fn, &r) == 0, "dn_target_fn not mapped");
	CHECK(r.name && strcmp(r.name, "dn_target_fn") == 0, "name %s", r.name ? r.name : "(null)");
	CHECK(r.offset == 0, "offset %llu", (unsigned long long)r.offset);
	CHECK(r.module && strcmp(r.module, bin) == 0, "module %s", r.module ? r.module : "(null)");
	first_name = r.name;
	CHECK(dn_sym_maps_resolve(m, base + fn + 3, &r) == 0 && r.offset == 3 && r.name &&
	              strcmp(r.name, "dn_target_fn") == 0,
	      "+3 gave %s+%llu", r.name ? r.name : "(null)", (unsigned long long)r.offset);
	/* not executable, and anonymous code: no answer */
	CHECK(dn_sym_maps_resolve(m, base + 0x10, &r) != 0, "r--p mapping resolved");
	CHECK(dn_sym_maps_resolve(m, 0x7f0000000010ull, &r) != 0, "anonymous mapping resolved");
	CHECK(dn_sym_maps_resolve(m, 0x10, &r) != 0, "unmapped address resolved");

	/* a second process mapping the same file shares its symbol table */
	m2 = dn_sym_maps_parse(maps);
	CHECK(dn_sym_maps_resolve(m2, base + fn, &r2) == 0 && r2.name == first_name,
	      "symbol table not shared between captures");
	dn_sym_maps_free(m2);
	dn_sym_maps_free(m);

	/* paths with spaces survive parsing */
	m = dn_sym_maps_parse("1000-2000 r-xp 00000000 fe:01 1 /tmp/a dir/with space\n");
	CHECK(dn_sym_maps_resolve(m, 0x1500, &r) == 0 && strcmp(r.module, "/tmp/a dir/with space") == 0, "module %s",
	      r.module ? r.module : "(null)");
	CHECK(r.name == NULL && r.offset == 0x500, "missing file gives module+offset, got %llx",
	      (unsigned long long)r.offset);
	dn_sym_maps_free(m);
}

static char order[8];
static int norder;

static void rec(void *obj)
{
	order[norder++] = *(char *)obj;
}

static void test_cleanup(void)
{
	static char a = 'a', b = 'b', c = 'c';

	dn_cleanup_add(&a, rec);
	dn_cleanup_add(&b, rec);
	dn_cleanup_add(&c, rec);
	dn_cleanup_remove(&b);
	dn_cleanup_run();
	dn_cleanup_run(); /* idempotent */
	CHECK(norder == 2 && order[0] == 'c' && order[1] == 'a', "order %.*s", norder, order);
}

/* The kernel symbol table on a made-up kallsyms: function symbols only,
 * aliases, a module's symbols out of order, hidden addresses, and on the
 * running kernel's: every function symbol resolves to itself. */
static void test_ksyms(void)
{
	char path[] = "/tmp/denet-kallsyms-XXXXXX";
	int fd = mkstemp(path);
	FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
	struct dn_sym_result r;
	struct dn_ksyms *k;

	CHECK(f != NULL, "mkstemp");
	if (!f)
		return;
	fputs("0000000000000000 A fixed_percpu_data\n"
	      "ffffffff81000000 T _stext\n"
	      "ffffffff81000000 T startup_64\n"
	      "ffffffff81000100 t helper\n"
	      "ffffffff81000200 D some_data\n"
	      "ffffffff81000300 W weak_fn\n"
	      "ffffffffc0002000 t mod_b\t[ext4]\n"
	      "ffffffffc0001000 T mod_a\t[ext4]\n"
	      "ffffffffc0003000 t other\t[xfs]\n",
	      f);
	fclose(f);
	k = dn_ksyms_load(path);
	unlink(path);
	CHECK(k != NULL, "load");
	if (!k)
		return;
	CHECK(dn_ksyms_count(k) == 7, "count %zu", dn_ksyms_count(k));
	CHECK(dn_ksyms_resolve(k, 0xffffffff80ffffffULL, &r) == -1, "below every symbol");
	CHECK(dn_ksyms_resolve(k, 0xffffffff81000010ULL, &r) == 0 && strcmp(r.name, "_stext") == 0 &&
	              r.offset == 0x10 && strcmp(r.module, "kernel") == 0,
	      "alias: %s+%" PRIu64, r.name, r.offset);
	/* data symbols are not functions: the function below covers it */
	CHECK(dn_ksyms_resolve(k, 0xffffffff81000208ULL, &r) == 0 && strcmp(r.name, "helper") == 0 && r.offset == 0x108,
	      "data: %s+%" PRIu64, r.name, r.offset);
	CHECK(dn_ksyms_resolve(k, 0xffffffff81000300ULL, &r) == 0 && strcmp(r.name, "weak_fn") == 0, "weak %s", r.name);
	CHECK(dn_ksyms_resolve(k, 0xffffffffc0001004ULL, &r) == 0 && strcmp(r.name, "mod_a") == 0 && r.offset == 4 &&
	              strcmp(r.module, "ext4") == 0,
	      "module: %s+%" PRIu64 " [%s]", r.name, r.offset, r.module);
	CHECK(dn_ksyms_resolve(k, 0xffffffffc0002fffULL, &r) == 0 && strcmp(r.name, "mod_b") == 0, "mod_b %s", r.name);
	CHECK(dn_ksyms_resolve(k, 0xffffffffc0003001ULL, &r) == 0 && strcmp(r.module, "xfs") == 0, "xfs %s", r.module);
	dn_ksyms_free(k);

	/* the running kernel (root reads the addresses), from one copy of
	 * its table: BPF programs loaded or unloaded meanwhile (any on a busy
	 * machine) add and remove symbols */
	char snap[] = "/tmp/dn_kallsyms.XXXXXX";
	int sfd = mkstemp(snap);
	CHECK(sfd >= 0, "mkstemp");
	if (sfd < 0)
		return;
	close(sfd);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "cat /proc/kallsyms > %s", snap);
	CHECK(system(cmd) == 0, "copy /proc/kallsyms");
	k = dn_ksyms_load(snap);
	CHECK(k != NULL, "load /proc/kallsyms");
	if (!k) {
		unlink(snap);
		return;
	}
	f = fopen(snap, "r");
	char line[512];
	unsigned long n = 0, bad = 0;
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long long a;
		char type, name[256];

		if (sscanf(line, "%llx %c %255s", &a, &type, name) != 3 || !a || !strchr("tTwW", type))
			continue;
		n++;
		if (dn_ksyms_resolve(k, a, &r) != 0 || r.offset != 0)
			bad++;
	}
	if (f)
		fclose(f);
	CHECK(n > 1000 && n == dn_ksyms_count(k), "%lu function symbols, %zu kept", n, dn_ksyms_count(k));
	CHECK(bad == 0, "%lu of %lu symbols did not resolve to themselves", bad, n);
	dn_ksyms_free(k);
	unlink(snap);
}

/* read a whole file into memory */
static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long n;

	*len = 0;
	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0) {
		buf = malloc((size_t)n);
		if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n)
			*len = (size_t)n;
	}
	fclose(f);
	return buf;
}

/* A compile cache entry: written, read back whole; only its own key,
 * compared whole (a key with a NUL inside is not its first part); a
 * flipped payload byte fails the checksum. */
static void test_bpfcache(void)
{
	char dir[] = "/tmp/denet-test-cache-XXXXXX", path[128], why[DN_ERRBUF], *label = NULL, *buf, *at;
	char *fields[] = { "u32 pid", "u64 ns" };
	unsigned char code[16] = { 0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95 };
	struct dn_bpf_table tab = {
		"counts", -1, 1, 4, 8, 64, 0, 0, 0, "\"int\"", "\"unsigned long long\"", fields, 2
	};
	struct dn_bpf_func fn = { "on_switch", code, sizeof(code) };
	struct dn_bpf_image img = { "GPL", 0, NULL, 0, &tab, 1, &fn, 1 }, back;
	size_t len;
	int rc;

	if (!mkdtemp(dir)) {
		CHECK(0, "mkdtemp failed");
		return;
	}
	snprintf(path, sizeof(path), "%s/entry", dir);
	CHECK(dn_bpfcache_write(path, "keyXtail", "a label", &img, why, sizeof(why)) == 0, "write: %s", why);
	buf = slurp(path, &len);
	CHECK(buf && len > 0, "nothing written");
	if (!buf)
		goto out;
	rc = dn_bpfcache_parse(buf, len, "keyXtail", &back, &label, why, sizeof(why));
	CHECK(rc == 0, "own key refused: %s", why);
	if (rc == 0) {
		CHECK(label && strcmp(label, "a label") == 0, "label %s", label ? label : "(none)");
		CHECK(strcmp(back.license, "GPL") == 0 && back.ntabs == 1 && back.nfns == 1, "%u tables, %u functions",
		      back.ntabs, back.nfns);
		CHECK(back.ntabs == 1 && strcmp(back.tabs[0].name, "counts") == 0 && back.tabs[0].leaf_size == 8 &&
		              back.tabs[0].max_entries == 64 && back.tabs[0].nfields == 2 &&
		              strcmp(back.tabs[0].fields[1], "u64 ns") == 0 && back.tabs[0].fd == -1,
		      "table not read back whole");
		CHECK(back.nfns == 1 && back.fns[0].len == sizeof(code) &&
		              memcmp(back.fns[0].code, code, sizeof(code)) == 0,
		      "code not read back whole");
		dn_bpf_image_free(&back);
	}
	free(label);
	rc = dn_bpfcache_parse(buf, len, "keyXtai", &back, NULL, why, sizeof(why));
	CHECK(rc == DN_CACHE_OTHER, "a shorter key: %d", rc);
	rc = dn_bpfcache_parse(buf, len, "keyXtail2", &back, NULL, why, sizeof(why));
	CHECK(rc == DN_CACHE_OTHER, "a longer key: %d", rc);
	/* the stored key becomes "key\0tail": not the key "key" */
	at = memmem(buf, len, "keyXtail", 8);
	CHECK(at != NULL, "key not found in the entry");
	if (at) {
		at[3] = 0;
		rc = dn_bpfcache_parse(buf, len, "key", &back, NULL, why, sizeof(why));
		CHECK(rc == DN_CACHE_OTHER, "a key with a NUL inside taken for its first part: %d", rc);
	}
	buf[len - 1] ^= 1;
	rc = dn_bpfcache_parse(buf, len, NULL, &back, NULL, why, sizeof(why));
	CHECK(rc == DN_CACHE_DAMAGED && strstr(why, "checksum"), "a flipped byte: %d (%s)", rc, why);
	free(buf);
out:
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const char *fixtures = getenv("DENET_FIXTURES");

	if (!fixtures) {
		fprintf(stderr, "DENET_FIXTURES is not set\n");
		return 2;
	}
	test_resolver(fixtures);
	test_ksyms();
	test_cleanup();
	test_bpfcache();
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("all checks passed\n");
	return 0;
}
