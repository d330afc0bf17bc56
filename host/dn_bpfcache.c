/*
 * dn_bpfcache.c - compiled BPF programs kept across runs.
 *
 * An entry is what a later run needs to load a program without clang:
 * every function's instructions (map references hold the table's index,
 * not a descriptor), every table's definition (type, sizes, flags, the
 * BTF type ids and libbcc's key/leaf descriptions that type the tables in
 * Lua), the program's BTF, license and kernel version.
 *
 * The file: a header line "denet-bpf-cache 1\n", then the key, the label,
 * the payload's length and its CRC-32 (zlib), then the payload. A short
 * file, a wrong length or a wrong CRC is "damaged"; a different key (two
 * inputs that hash alike) is "another". Writers fill a temporary file
 * beside the entry and rename it into place, so a reader never sees half
 * an entry and two writers of one entry are both right.
 *
 * Readers go through dn_trust_read: a privileged denet loads an entry only
 * from a file and folder that root or the invoking user owns and others
 * cannot write, as it does for scripts.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <zlib.h>

#include "dn.h"

#define MAGIC "denet-bpf-cache 1\n"

uint64_t dn_fnv64(const void *p, size_t n, uint64_t h)
{
	const unsigned char *s = p;
	size_t i;

	if (h == 0)
		h = 0xcbf29ce484222325ULL;
	for (i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* --- writing ----------------------------------------------------------------- */

struct wbuf {
	unsigned char *p;
	size_t len, cap;
	int oom;
};

static void put(struct wbuf *b, const void *data, size_t n)
{
	if (b->oom || n == 0)
		return;
	if (b->len + n > b->cap) {
		size_t nc = b->cap ? b->cap : 4096;
		unsigned char *np;

		while (nc < b->len + n)
			nc *= 2;
		np = realloc(b->p, nc);
		if (!np) {
			b->oom = 1;
			return;
		}
		b->p = np;
		b->cap = nc;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
}

static void put_u32(struct wbuf *b, uint32_t v)
{
	put(b, &v, sizeof(v));
}

static void put_u64(struct wbuf *b, uint64_t v)
{
	put(b, &v, sizeof(v));
}

static void put_bytes(struct wbuf *b, const void *p, size_t n)
{
	put_u64(b, n);
	put(b, p, n);
}

static void put_str(struct wbuf *b, const char *s)
{
	put_bytes(b, s ? s : "", s ? strlen(s) : 0);
}

static void encode(struct wbuf *b, const struct dn_bpf_image *img)
{
	uint32_t i, j;

	put_str(b, img->license);
	put_u32(b, img->kern_version);
	put_bytes(b, img->btf, img->btf_len);
	put_u32(b, img->ntabs);
	for (i = 0; i < img->ntabs; i++) {
		const struct dn_bpf_table *t = &img->tabs[i];

		put_str(b, t->name);
		put_u32(b, t->type);
		put_u32(b, t->key_size);
		put_u32(b, t->leaf_size);
		put_u32(b, t->max_entries);
		put_u32(b, t->flags);
		put_u32(b, t->btf_key);
		put_u32(b, t->btf_value);
		put_str(b, t->key_desc);
		put_str(b, t->leaf_desc);
		put_u32(b, t->nfields);
		for (j = 0; j < t->nfields; j++)
			put_str(b, t->fields[j]);
	}
	put_u32(b, img->nfns);
	for (i = 0; i < img->nfns; i++) {
		put_str(b, img->fns[i].name);
		put_bytes(b, img->fns[i].code, img->fns[i].len);
	}
}

int dn_bpfcache_write(const char *path, const char *key, const char *label, const struct dn_bpf_image *img, char *why,
                      size_t n)
{
	struct wbuf pay = { 0 }, head = { 0 };
	char *tmp = NULL;
	int fd = -1, rc = -1;
	uLong crc;

	encode(&pay, img);
	crc = crc32(0L, Z_NULL, 0);
	if (!pay.oom)
		crc = crc32(crc, pay.p, (uInt)pay.len);
	put(&head, MAGIC, strlen(MAGIC));
	put_str(&head, key);
	put_str(&head, label);
	put_u64(&head, pay.len);
	put_u32(&head, (uint32_t)crc);
	if (pay.oom || head.oom) {
		snprintf(why, n, "out of memory");
		goto out;
	}
	if (asprintf(&tmp, "%s.tmp.%d", path, (int)getpid()) < 0) {
		tmp = NULL;
		snprintf(why, n, "out of memory");
		goto out;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) {
		snprintf(why, n, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	{
		struct wbuf *parts[2] = { &head, &pay };
		int k;

		for (k = 0; k < 2; k++) {
			size_t off = 0;

			while (off < parts[k]->len) {
				ssize_t w = write(fd, parts[k]->p + off, parts[k]->len - off);

				if (w < 0 && errno == EINTR)
					continue;
				if (w <= 0) {
					snprintf(why, n, "%s: %s", tmp, w < 0 ? strerror(errno) : "short write");
					goto out;
				}
				off += (size_t)w;
			}
		}
	}
	if (close(fd) != 0) {
		fd = -1;
		snprintf(why, n, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) != 0) {
		snprintf(why, n, "%s: %s", path, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	if (rc != 0 && tmp)
		unlink(tmp);
	free(tmp);
	free(pay.p);
	free(head.p);
	return rc;
}

/* --- reading ----------------------------------------------------------------- */

struct rbuf {
	const unsigned char *p;
	size_t len, off;
	int bad;
};

static int take(struct rbuf *r, void *out, size_t n)
{
	if (r->bad || n > r->len - r->off) {
		r->bad = 1;
		return -1;
	}
	memcpy(out, r->p + r->off, n);
	r->off += n;
	return 0;
}

static uint32_t get_u32(struct rbuf *r)
{
	uint32_t v = 0;

	take(r, &v, sizeof(v));
	return v;
}

static uint64_t get_u64(struct rbuf *r)
{
	uint64_t v = 0;

	take(r, &v, sizeof(v));
	return v;
}

/* A length-prefixed block, copied with a NUL after it (a string as well). */
static char *get_bytes(struct rbuf *r, size_t *len)
{
	uint64_t n = get_u64(r);
	char *s;

	if (r->bad || n > r->len - r->off) {
		r->bad = 1;
		return NULL;
	}
	s = malloc((size_t)n + 1);
	if (!s) {
		r->bad = 1;
		return NULL;
	}
	memcpy(s, r->p + r->off, (size_t)n);
	s[n] = 0;
	r->off += (size_t)n;
	if (len)
		*len = (size_t)n;
	return s;
}

/* A count of things at least `min` bytes each, within what is left. */
static uint32_t get_count(struct rbuf *r, size_t min)
{
	uint32_t c = get_u32(r);

	if (!r->bad && (size_t)c > (r->len - r->off) / min)
		r->bad = 1;
	return r->bad ? 0 : c;
}

void dn_bpf_image_free(struct dn_bpf_image *img)
{
	uint32_t i, j;

	free(img->license);
	free(img->btf);
	for (i = 0; i < img->ntabs; i++) {
		struct dn_bpf_table *t = &img->tabs[i];

		free(t->name);
		free(t->key_desc);
		free(t->leaf_desc);
		for (j = 0; j < t->nfields; j++)
			free(t->fields[j]);
		free(t->fields);
	}
	free(img->tabs);
	for (i = 0; i < img->nfns; i++) {
		free(img->fns[i].name);
		free(img->fns[i].code);
	}
	free(img->fns);
	memset(img, 0, sizeof(*img));
}

static int decode(struct rbuf *r, struct dn_bpf_image *img)
{
	uint32_t i, j;

	img->license = get_bytes(r, NULL);
	img->kern_version = get_u32(r);
	img->btf = get_bytes(r, &img->btf_len);
	img->ntabs = get_count(r, 48);
	img->tabs = calloc(img->ntabs + 1, sizeof(*img->tabs));
	if (!img->tabs)
		return -1;
	for (i = 0; i < img->ntabs && !r->bad; i++) {
		struct dn_bpf_table *t = &img->tabs[i];

		t->fd = -1;
		t->name = get_bytes(r, NULL);
		t->type = get_u32(r);
		t->key_size = get_u32(r);
		t->leaf_size = get_u32(r);
		t->max_entries = get_u32(r);
		t->flags = get_u32(r);
		t->btf_key = get_u32(r);
		t->btf_value = get_u32(r);
		t->key_desc = get_bytes(r, NULL);
		t->leaf_desc = get_bytes(r, NULL);
		t->nfields = get_count(r, 8);
		t->fields = calloc(t->nfields + 1, sizeof(*t->fields));
		if (!t->fields) {
			t->nfields = 0;
			return -1;
		}
		for (j = 0; j < t->nfields; j++)
			t->fields[j] = get_bytes(r, NULL);
	}
	img->nfns = get_count(r, 16);
	img->fns = calloc(img->nfns + 1, sizeof(*img->fns));
	if (!img->fns)
		return -1;
	for (i = 0; i < img->nfns && !r->bad; i++) {
		img->fns[i].name = get_bytes(r, NULL);
		img->fns[i].code = (unsigned char *)get_bytes(r, &img->fns[i].len);
	}
	return r->bad || r->off != r->len ? -1 : 0;
}

int dn_bpfcache_parse(const void *buf, size_t len, const char *key, struct dn_bpf_image *img, char **label, char *why,
                      size_t n)
{
	struct rbuf r = { buf, len, 0, 0 };
	char *k = NULL, *lab = NULL;
	size_t klen = 0;
	uint64_t plen;
	uint32_t crc;
	int rc = DN_CACHE_DAMAGED;

	memset(img, 0, sizeof(*img));
	if (label)
		*label = NULL;
	if (len < strlen(MAGIC) || memcmp(buf, MAGIC, strlen(MAGIC)) != 0) {
		snprintf(why, n, "not a denet cache entry of this version");
		return DN_CACHE_DAMAGED;
	}
	r.off = strlen(MAGIC);
	k = get_bytes(&r, &klen);
	lab = get_bytes(&r, NULL);
	plen = get_u64(&r);
	crc = get_u32(&r);
	if (r.bad) {
		snprintf(why, n, "the entry is cut short");
		goto out;
	}
	/* the whole key: one with a NUL inside is not equal to its first part */
	if (key && (klen != strlen(key) || memcmp(k, key, klen) != 0)) {
		snprintf(why, n, "the entry is for other inputs");
		rc = DN_CACHE_OTHER;
		goto out;
	}
	if (plen != r.len - r.off) {
		snprintf(why, n, "the entry holds %zu bytes of %llu", r.len - r.off, (unsigned long long)plen);
		goto out;
	}
	if ((uint32_t)crc32(crc32(0L, Z_NULL, 0), r.p + r.off, (uInt)plen) != crc) {
		snprintf(why, n, "the entry's checksum does not match");
		goto out;
	}
	r.p += r.off;
	r.len = (size_t)plen;
	r.off = 0;
	if (decode(&r, img) != 0) {
		dn_bpf_image_free(img);
		snprintf(why, n, "the entry does not decode");
		goto out;
	}
	rc = 0;
	if (label) {
		*label = lab;
		lab = NULL;
	}
out:
	free(k);
	free(lab);
	return rc;
}

int dn_bpfcache_read(const char *path, const char *key, struct dn_bpf_image *img, char **label, char *why, size_t n)
{
	char *buf = NULL;
	size_t len = 0;
	int rc = dn_trust_read(path, &buf, &len, why, n);

	memset(img, 0, sizeof(*img));
	if (rc == -ENOENT)
		return DN_CACHE_ABSENT;
	if (rc < 0) {
		if (!why[0])
			snprintf(why, n, "%s: %s", path, strerror(-rc));
		return DN_CACHE_REFUSED;
	}
	rc = dn_bpfcache_parse(buf, len, key, img, label, why, n);
	free(buf);
	return rc;
}
