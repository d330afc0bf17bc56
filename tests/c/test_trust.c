/*
 * test_trust.c - C unit tests of the loader's walk (dn_trust.c) as root:
 * links relative and absolute, "..", link loops, folders instead of files,
 * group- and world-writable elements, sticky folders, and that the
 * descriptor returned reads the file that was judged.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

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

static char base[64];

static const char *at(const char *rel)
{
	static char p[4][256];
	static int i;

	i = (i + 1) % 4;
	snprintf(p[i], sizeof(p[i]), "%s/%s", base, rel);
	return p[i];
}

static void put(const char *rel, const char *text, mode_t mode, uid_t uid)
{
	FILE *f = fopen(at(rel), "w");

	if (!f) {
		perror(at(rel));
		exit(1);
	}
	fputs(text, f);
	fclose(f);
	if (chmod(at(rel), mode) != 0 || chown(at(rel), uid, 0) != 0)
		perror(at(rel));
}

static void dir(const char *rel, mode_t mode, uid_t uid)
{
	if (mkdir(at(rel), 0700) != 0 || chmod(at(rel), mode) != 0 || chown(at(rel), uid, 0) != 0)
		perror(at(rel));
}

/* open through the walk; read the content when it opens */
static int try_read(const char *path, char *out, size_t n, char *why, size_t wn)
{
	char *buf;
	size_t len;
	int rc = dn_trust_read(path, &buf, &len, why, wn);

	out[0] = '\0';
	if (rc == 0) {
		snprintf(out, n, "%.*s", (int)len, buf);
		free(buf);
	}
	return rc;
}

int main(void)
{
	char got[256], why[DN_ERRBUF];
	int rc;

	if (geteuid() != 0) {
		fprintf(stderr, "test_trust: needs root (the checks are off without privileges)\n");
		return 77;
	}
	strcpy(base, "/tmp/dn-trust.XXXXXX");
	if (!mkdtemp(base))
		return 1;
	chmod(base, 0755);
	dn_trust_init(0);
	CHECK(dn_trust_enforced(), "root: checks on");

	dir("a", 0755, 0);
	put("a/f.lua", "root's", 0644, 0);
	rc = try_read(at("a/f.lua"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == 0 && strcmp(got, "root's") == 0, "plain file: rc %d got '%s' why '%s'", rc, got, why);

	/* relative link with "..", and an absolute one */
	dir("b", 0755, 0);
	CHECK(symlink("../a/f.lua", at("b/rel")) == 0, "symlink");
	rc = try_read(at("b/rel"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == 0 && strcmp(got, "root's") == 0, "relative link: rc %d why '%s'", rc, why);
	CHECK(symlink(at("a"), at("b/abs")) == 0, "symlink");
	rc = try_read(at("b/abs/./f.lua"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == 0 && strcmp(got, "root's") == 0, "absolute link to a folder: rc %d why '%s'", rc, why);
	rc = try_read(at("b/../a/f.lua"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == 0, "'..' in the path: rc %d why '%s'", rc, why);

	/* a loop of links */
	CHECK(symlink("loop2", at("b/loop1")) == 0 && symlink("loop1", at("b/loop2")) == 0, "symlinks");
	rc = try_read(at("b/loop1"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == -ELOOP && strstr(why, "too many symbolic links"), "loop: rc %d why '%s'", rc, why);

	/* missing, a folder, not a folder */
	rc = try_read(at("a/none.lua"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == -ENOENT, "missing: rc %d", rc);
	rc = try_read(at("a"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == -EISDIR, "a folder: rc %d", rc);
	rc = try_read(at("a/f.lua/x"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == -ENOTDIR, "through a file: rc %d", rc);
	CHECK(dn_trust_dir(at("a"), why, sizeof(why)) == 0, "folder judged: %s", why);

	/* writable by the group; by everyone; another owner */
	put("a/g.lua", "x", 0664, 0);
	rc = try_read(at("a/g.lua"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == -EPERM && strstr(why, "it is writable by its group (fix: chmod g-w "), "group: %s", why);
	dir("w", 0777, 0);
	put("w/f.lua", "x", 0644, 0);
	rc = try_read(at("w/f.lua"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == -EPERM && strstr(why, "its folder ") && strstr(why, "/w is writable by everyone"),
	      "world-writable folder: %s", why);
	put("a/o.lua", "x", 0644, 65534);
	rc = try_read(at("a/o.lua"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == -EPERM && strstr(why, "it belongs to nobody (uid 65534), not to root"), "owner: %s", why);

	/* a sticky folder: root's entries pass, another user's do not */
	dir("s", 01777, 0);
	put("s/f.lua", "sticky", 0644, 0);
	rc = try_read(at("s/f.lua"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == 0 && strcmp(got, "sticky") == 0, "sticky, root's: rc %d why '%s'", rc, why);
	put("s/o.lua", "x", 0644, 65534);
	rc = try_read(at("s/o.lua"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == -EPERM, "sticky, another user's: rc %d", rc);

	/* the invoking user's files pass */
	setenv("SUDO_UID", "65534", 1);
	dn_trust_init(0);
	rc = try_read(at("a/o.lua"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == 0, "SUDO_UID's own file: rc %d why '%s'", rc, why);
	unsetenv("SUDO_UID");
	dn_trust_init(0);

	/* --allow-untrusted */
	dn_trust_allow(1);
	rc = try_read(at("w/f.lua"), got, sizeof(got), why, sizeof(why));
	CHECK(rc == 0, "allowed: rc %d", rc);
	dn_trust_allow(0);

	{
		char cmd[128];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", base);
	}
	if (failures)
		fprintf(stderr, "test_trust: %d failure(s)\n", failures);
	else
		printf("test_trust: all checks passed\n");
	return failures ? 1 : 0;
}
