/*
 * dn_trust.c - what a privileged denet agrees to load, and loading exactly
 * what was checked.
 *
 * denet runs as root and loads Lua code, native Lua modules and BPF C at
 * run time. When the process is privileged (euid 0 or any effective
 * capability), a file is loaded only if it and every directory from / down
 * to it belong to root or to the invoking user (SUDO_UID under sudo, else
 * the real uid), and none of them is writable by group or others; a sticky
 * directory (/tmp) may be, since its entries are then judged by their
 * owner. Symbolic links are followed by hand, each judged as an entry of
 * the directory holding it.
 *
 * The walk opens every component with openat(O_PATH | O_NOFOLLOW) from the
 * descriptor of the directory above it and judges the opened object with
 * fstat, so no component can be swapped between the check and the use; the
 * file is then read (or, for a native module, dlopen'ed) through the
 * descriptor that was checked.
 *
 * This file also replaces Lua's file searchers and loaders (package.loaders
 * 2-4, loadfile, dofile, package.loadlib) with ones that go through the
 * walk, and cleans package.path/cpath: relative entries are dropped, and
 * entries from LUA_PATH/LUA_CPATH in folders that fail the check are
 * dropped with one line each.
 *
 * Depends on libc, Linux (O_PATH, capget) and dlopen. Errors are user
 * errors (dn_vm_user_error): one line naming the file, the owner or mode
 * that failed, the fix, and --allow-untrusted.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <linux/capability.h>

#include "dn.h"

#define MAX_DEPTH 128
#define MAX_LINKS 40

static int enforced = -1; /* -1: not decided yet */
static int allowed;
static uid_t invoker;

static int privileged(void)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];

	if (geteuid() == 0)
		return 1;
	memset(d, 0, sizeof(d));
	if (syscall(SYS_capget, &h, d) != 0)
		return 0;
	return d[0].effective != 0 || d[1].effective != 0;
}

void dn_trust_init(int allow_untrusted)
{
	const char *sudo = getenv("SUDO_UID");
	char *end;
	unsigned long u;

	enforced = privileged();
	allowed = allow_untrusted;
	invoker = getuid();
	if (invoker == 0 && sudo && *sudo) {
		errno = 0;
		u = strtoul(sudo, &end, 10);
		if (errno == 0 && *end == '\0' && u < (unsigned long)(uid_t)-1)
			invoker = (uid_t)u;
	}
}

int dn_trust_enforced(void)
{
	if (enforced < 0)
		dn_trust_init(0);
	return enforced && !allowed;
}

void dn_trust_allow(int allow)
{
	if (enforced < 0)
		dn_trust_init(allow);
	allowed = allow;
}

static int uid_ok(uid_t uid)
{
	return uid == 0 || uid == invoker;
}

static const char *user_name(uid_t uid, char *buf, size_t n)
{
	struct passwd *pw = getpwuid(uid);

	if (pw && pw->pw_name)
		snprintf(buf, n, "%s (uid %u)", pw->pw_name, (unsigned)uid);
	else
		snprintf(buf, n, "uid %u", (unsigned)uid);
	return buf;
}

/* Judge one opened object of the chain (at path `what`); 0 or -EPERM with
 * the reason and its fix in why ("it ..." for the file itself, "its
 * folder X ..." for a directory above it). */
static int judge(const struct stat *st, const char *what, char *why, size_t n)
{
	char owner[96], me[128], role[PATH_MAX + 32];
	int sticky_dir = S_ISDIR(st->st_mode) && (st->st_mode & S_ISVTX);

	if (S_ISDIR(st->st_mode))
		snprintf(role, sizeof(role), "its folder %s", what);
	else if (S_ISLNK(st->st_mode))
		snprintf(role, sizeof(role), "the symbolic link %s", what);
	else
		snprintf(role, sizeof(role), "it");
	if (!uid_ok(st->st_uid)) {
		if (invoker == 0)
			snprintf(me, sizeof(me), "root");
		else
			snprintf(me, sizeof(me), "root or %s", user_name(invoker, owner, sizeof(owner)));
		snprintf(why, n,
		         "%s belongs to %s, not to %s (fix: chown root %s, or use a copy in a folder of "
		         "yours; --allow-untrusted overrides)",
		         role, user_name(st->st_uid, owner, sizeof(owner)), me, what);
		return -EPERM;
	}
	if (!S_ISLNK(st->st_mode) && (st->st_mode & 022) && !sticky_dir) {
		int everyone = (st->st_mode & 002) != 0;

		snprintf(why, n, "%s is writable by %s (fix: chmod %s %s; --allow-untrusted overrides)", role,
		         everyone ? "everyone" : "its group", everyone ? "go-w" : "g-w", what);
		return -EPERM;
	}
	return 0;
}

struct walk {
	int fd[MAX_DEPTH];     /* fd[0]: "/"; fd[depth-1]: the current directory */
	size_t len[MAX_DEPTH]; /* length of `shown` at each level */
	int depth;
	char shown[PATH_MAX * 2]; /* the path walked so far, for messages */
	char *rest;               /* the path being walked (owned; links replace it) */
	char *p;                  /* what is left of it to walk */
	int links;                /* symbolic links followed */
};

static void walk_pop_all(struct walk *w)
{
	while (w->depth > 0)
		close(w->fd[--w->depth]);
}

static int walk_root(struct walk *w, char *why, size_t n)
{
	struct stat st;
	int fd;

	walk_pop_all(w);
	fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	w->fd[0] = fd;
	w->depth = 1;
	strcpy(w->shown, "/");
	w->len[0] = 1;
	if (fstat(fd, &st) != 0)
		return -errno;
	return judge(&st, "/", why, n);
}

/* Append component c to `shown` (for messages). */
static void shown_push(struct walk *w, const char *c)
{
	size_t l = strlen(w->shown);

	snprintf(w->shown + l, sizeof(w->shown) - l, "%s%s", l > 1 ? "/" : "", c);
}

/* The next component of what is left to walk (cut out in place), or NULL
 * at the end. */
static char *walk_next(struct walk *w)
{
	char *c, *next;

	while (*w->p == '/')
		w->p++;
	if (*w->p == '\0')
		return NULL;
	c = w->p;
	next = strchr(c, '/');
	if (next) {
		*next = '\0';
		w->p = next + 1;
	} else {
		w->p = c + strlen(c);
	}
	return c;
}

/* The symbolic link fd (judged already; closed here) is followed: its
 * target replaces it in what is left to walk, from / or from the
 * directory holding it. 0, or -errno. */
static int walk_link(struct walk *w, int fd, const char *path, char *why, size_t n)
{
	char target[PATH_MAX];
	ssize_t tl = readlinkat(fd, "", target, sizeof(target) - 1);
	char *joined;

	close(fd);
	if (tl < 0)
		return -errno;
	target[tl] = '\0';
	if (++w->links > MAX_LINKS) {
		snprintf(why, n, "%s: too many symbolic links", path);
		return -ELOOP;
	}
	if (asprintf(&joined, "%s/%s", target, w->p) < 0)
		return -ENOMEM;
	free(w->rest);
	w->rest = w->p = joined;
	if (target[0] == '/')
		return walk_root(w, why, n);
	/* relative: from the directory holding the link */
	w->shown[w->len[w->depth - 1]] = '\0';
	return 0;
}

/* The judged regular file c (st) of directory dfd, opened for reading
 * through its name in that directory, and checked to be still the object
 * that was judged: its descriptor, or -errno. */
static int walk_open_file(struct walk *w, int dfd, const char *c, const struct stat *st, char *why, size_t n)
{
	struct stat st2;
	int rfd;

	if (!S_ISREG(st->st_mode)) {
		snprintf(why, n, "%s is not a regular file", w->shown);
		return -EPERM;
	}
	rfd = openat(dfd, c, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (rfd < 0)
		return -errno;
	if (fstat(rfd, &st2) != 0 || st2.st_dev != st->st_dev || st2.st_ino != st->st_ino) {
		close(rfd);
		snprintf(why, n, "%s changed while it was being checked", w->shown);
		return -EAGAIN;
	}
	return rfd;
}

/* walk_step's "go on": no descriptor is this large */
#define WALK_ON INT_MAX

/* Step to component c: ".", "..", a link (followed), a directory (entered)
 * or the file (opened). WALK_ON to go on, or the walk's result: a file's
 * descriptor, or -errno. */
static int walk_step(struct walk *w, char *c, int want_dir, const char *path, char *why, size_t n)
{
	struct stat st;
	int dfd, fd, rc;

	if (strcmp(c, ".") == 0)
		return WALK_ON;
	if (strcmp(c, "..") == 0) {
		if (w->depth > 1) {
			close(w->fd[--w->depth]);
			w->shown[w->len[w->depth - 1]] = '\0';
		}
		return WALK_ON;
	}
	dfd = w->fd[w->depth - 1];
	fd = openat(dfd, c, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) != 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	shown_push(w, c);
	rc = judge(&st, w->shown, why, n);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	if (S_ISLNK(st.st_mode)) {
		rc = walk_link(w, fd, path, why, n);
		return rc < 0 ? rc : WALK_ON;
	}
	if (S_ISDIR(st.st_mode)) {
		if (w->depth == MAX_DEPTH) {
			close(fd);
			return -ENAMETOOLONG;
		}
		w->fd[w->depth] = fd;
		w->len[w->depth] = strlen(w->shown);
		w->depth++;
		return WALK_ON;
	}
	close(fd);
	/* a file: it must be the last component */
	while (*w->p == '/')
		w->p++;
	if (*w->p != '\0' || want_dir)
		return -ENOTDIR;
	return walk_open_file(w, dfd, c, &st, why, n);
}

/*
 * The walk itself. want_dir: the path names a directory (only judged).
 * Returns an O_RDONLY descriptor of the regular file (or 0 for a judged
 * directory), or -errno: -EPERM refused (why says why), -ENOENT/-ENOTDIR
 * not there, -ELOOP too many links, others from the system.
 */
static int walk_path(const char *path, int want_dir, char *why, size_t n)
{
	struct walk w = { .depth = 0 };
	char cwd[PATH_MAX], *c;
	int rc;

	why[0] = '\0';
	/* what is left to walk, absolute */
	if (path[0] != '/') {
		if (!getcwd(cwd, sizeof(cwd)))
			return -errno;
		if (asprintf(&w.rest, "%s/%s", cwd, path) < 0)
			return -ENOMEM;
	} else if (!(w.rest = strdup(path))) {
		return -ENOMEM;
	}
	w.p = w.rest;
	rc = walk_root(&w, why, n);
	while (rc >= 0) {
		c = walk_next(&w);
		if (!c) {
			/* the path ended on a directory */
			rc = want_dir ? 0 : -EISDIR;
			if (rc < 0)
				snprintf(why, n, "%s is a directory", w.shown);
			break;
		}
		rc = walk_step(&w, c, want_dir, path, why, n);
		if (rc != WALK_ON)
			break;
	}
	walk_pop_all(&w);
	free(w.rest);
	return rc;
}

int dn_trust_open(const char *path, char *why, size_t n)
{
	int fd;

	if (!dn_trust_enforced()) {
		why[0] = '\0';
		fd = open(path, O_RDONLY | O_CLOEXEC);
		return fd < 0 ? -errno : fd;
	}
	return walk_path(path, 0, why, n);
}

int dn_trust_dir(const char *path, char *why, size_t n)
{
	struct stat st;

	if (!dn_trust_enforced()) {
		why[0] = '\0';
		if (stat(path, &st) != 0)
			return -errno;
		return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
	}
	return walk_path(path, 1, why, n);
}

int dn_trust_read(const char *path, char **buf, size_t *len, char *why, size_t n)
{
	int fd = dn_trust_open(path, why, n);
	size_t cap = 8192, used = 0;
	char *b;
	ssize_t r;

	if (fd < 0)
		return fd;
	b = malloc(cap);
	if (!b) {
		close(fd);
		return -ENOMEM;
	}
	for (;;) {
		if (used == cap) {
			char *nb = realloc(b, cap * 2);

			if (!nb) {
				free(b);
				close(fd);
				return -ENOMEM;
			}
			b = nb;
			cap *= 2;
		}
		r = read(fd, b + used, cap - used);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;

			free(b);
			close(fd);
			return -e;
		}
		if (r == 0)
			break;
		used += (size_t)r;
	}
	close(fd);
	*buf = b;
	*len = used;
	return 0;
}

/* The message of a failed open, for users: "refusing to load PATH: why"
 * for a refusal, "cannot read PATH: strerror" otherwise. */
static void describe_failure(lua_State *L, const char *path, int rc, const char *why)
{
	if (rc == -EPERM || rc == -EAGAIN || (rc == -ELOOP && why[0]))
		lua_pushfstring(L, "refusing to load %s: %s", path, why);
	else
		lua_pushfstring(L, "cannot read %s: %s", path, strerror(-rc));
}

/* --- Lua: core.trust_* ------------------------------------------------- */

/* core.trust_read(path) -> text | nil, message, errno, refused
 * refused is true when the file exists but may not be loaded. */
static int l_trust_read(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char why[DN_ERRBUF];
	char *buf;
	size_t len;
	int rc = dn_trust_read(path, &buf, &len, why, sizeof(why));

	if (rc < 0) {
		lua_pushnil(L);
		describe_failure(L, path, rc, why);
		lua_pushinteger(L, -rc);
		lua_pushboolean(L, rc == -EPERM || rc == -EAGAIN);
		return 4;
	}
	lua_pushlstring(L, buf, len);
	free(buf);
	return 1;
}

/* core.trust_dir(path) -> true | nil, reason, errno (reason without the
 * "refusing to load" prefix) */
static int l_trust_dir(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char why[DN_ERRBUF];
	int rc = dn_trust_dir(path, why, sizeof(why));

	if (rc < 0)
		return dn_vm_fail(L, -rc, "%s", why[0] ? why : strerror(-rc));
	lua_pushboolean(L, 1);
	return 1;
}

/* core.trust_policy() -> { enforced, invoker } */
static int l_trust_policy(lua_State *L)
{
	lua_createtable(L, 0, 2);
	lua_pushboolean(L, dn_trust_enforced());
	lua_setfield(L, -2, "enforced");
	lua_pushinteger(L, (lua_Integer)invoker);
	lua_setfield(L, -2, "invoker");
	return 1;
}

/* core.trust_allow(bool): --allow-untrusted for the rest of the run */
static int l_trust_allow(lua_State *L)
{
	dn_trust_allow(lua_toboolean(L, 1));
	return 0;
}

/* --- Lua's loaders, through the walk ---------------------------------- */

/* Load the Lua file at path as a chunk named @path. Pushes the function
 * (returns 0), or the error message (returns -errno; -EPERM: refused). */
static int load_lua_file(lua_State *L, const char *path)
{
	char why[DN_ERRBUF];
	char *buf, *chunk;
	size_t len;
	int rc = dn_trust_read(path, &buf, &len, why, sizeof(why));

	if (rc < 0) {
		describe_failure(L, path, rc, why);
		return rc == -EAGAIN ? -EPERM : rc;
	}
	lua_pushfstring(L, "@%s", path);
	chunk = buf;
	/* a #! first line is a comment, as lua.c and loadfile treat it */
	if (len > 0 && buf[0] == '#') {
		while (len > 0 && *chunk != '\n') {
			chunk++;
			len--;
		}
	}
	rc = luaL_loadbuffer(L, chunk, len, lua_tostring(L, -1));
	free(buf);
	lua_remove(L, -2);
	return rc == 0 ? 0 : -EINVAL;
}

/* Open a native library through the walk and dlopen the descriptor that
 * was checked. The descriptor stays open for the life of the process: the
 * library's name in the dynamic linker is /proc/self/fd/N, and reusing N
 * for another file would make dlopen hand back this library. */
static void *open_native(lua_State *L, const char *path, int *err)
{
	char why[DN_ERRBUF], proc[64];
	int fd;
	void *h;

	if (!dn_trust_enforced()) {
		h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
		if (!h) {
			*err = -ENOEXEC;
			lua_pushstring(L, dlerror());
		}
		return h;
	}
	fd = dn_trust_open(path, why, sizeof(why));
	if (fd < 0) {
		describe_failure(L, path, fd, why);
		*err = fd == -EAGAIN ? -EPERM : fd;
		return NULL;
	}
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	h = dlopen(proc, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		*err = -ENOEXEC;
		lua_pushfstring(L, "%s: %s", path, dlerror());
		close(fd);
	}
	return h;
}

/* Raise the refusal on top of the stack as a user error. */
static int raise_refusal(lua_State *L)
{
	dn_vm_user_error(L, lua_tostring(L, -1), 2);
	return lua_error(L);
}

/* luaopen_ symbol of a module name: the part after a '-' is used, dots
 * become underscores (Lua 5.1's rule). */
static void symbol_name(char *out, size_t n, const char *name)
{
	const char *mark = strchr(name, '-');
	size_t i;

	if (mark)
		name = mark + 1;
	snprintf(out, n, "luaopen_%s", name);
	for (i = 8; out[i]; i++)
		if (out[i] == '.')
			out[i] = '_';
}

/*
 * Walk the templates of package[field] for name (dots become slashes).
 * For each existing candidate calls found(L, path, ud); templates that are
 * not absolute are skipped. Pushes the "no file" list when nothing is
 * found and returns 0; returns found's result (1) when it pushed a loader.
 */
static int search(lua_State *L, const char *field, const char *name,
                  int (*found)(lua_State *L, const char *path, const char *modname), const char *modname)
{
	const char *tpl;
	luaL_Buffer miss;
	char sub[PATH_MAX], path[PATH_MAX];
	size_t i;

	snprintf(sub, sizeof(sub), "%s", name);
	for (i = 0; sub[i]; i++)
		if (sub[i] == '.')
			sub[i] = '/';
	lua_getglobal(L, "package");
	lua_getfield(L, -1, field);
	tpl = lua_tostring(L, -1);
	lua_pop(L, 2); /* the string stays alive in package[field] while we run */
	if (!tpl)
		return luaL_error(L, "package.%s must be a string", field);
	luaL_buffinit(L, &miss);
	while (*tpl) {
		const char *end = strchr(tpl, ';');
		size_t tl = end ? (size_t)(end - tpl) : strlen(tpl);
		size_t o = 0, k;
		int rel = tl > 0 && tpl[0] != '/';
		struct stat st;

		for (k = 0; k < tl && o + 1 < sizeof(path); k++) {
			if (tpl[k] == '?') {
				o += (size_t)snprintf(path + o, sizeof(path) - o, "%s", sub);
				if (o >= sizeof(path))
					o = sizeof(path) - 1;
			} else {
				path[o++] = tpl[k];
			}
		}
		path[o] = '\0';
		tpl += tl + (end ? 1 : 0);
		if (tl == 0)
			continue;
		if (rel) {
			lua_pushfstring(L, "\n\tno file '%s' (relative entries are never searched)", path);
			luaL_addvalue(&miss);
			continue;
		}
		/* stat is only a cheap "is anything there"; the walk decides */
		if (stat(path, &st) != 0) {
			lua_pushfstring(L, "\n\tno file '%s'", path);
			luaL_addvalue(&miss);
			continue;
		}
		luaL_pushresult(&miss);
		lua_pop(L, 1);
		return found(L, path, modname);
	}
	luaL_pushresult(&miss);
	return 1;
}

static int found_lua(lua_State *L, const char *path, const char *modname)
{
	int rc = load_lua_file(L, path);

	if (rc == -EPERM)
		return raise_refusal(L);
	if (rc < 0)
		return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", modname, path,
		                  lua_tostring(L, -1));
	return 1;
}

static int found_c(lua_State *L, const char *path, const char *modname)
{
	char sym[256];
	int err = 0;
	void *h = open_native(L, path, &err);
	lua_CFunction f;

	if (!h) {
		if (err == -EPERM)
			return raise_refusal(L);
		return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", modname, path,
		                  lua_tostring(L, -1));
	}
	symbol_name(sym, sizeof(sym), modname);
	f = (lua_CFunction)(uintptr_t)dlsym(h, sym);
	if (!f) {
		lua_pushfstring(L, "\n\tno module '%s' in file '%s'", modname, path);
		return 1;
	}
	lua_pushcfunction(L, f);
	return 1;
}

/* package.loaders[2]: Lua files on package.path */
static int searcher_lua(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);

	return search(L, "path", name, found_lua, name);
}

/* package.loaders[3]: native modules on package.cpath */
static int searcher_c(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);

	return search(L, "cpath", name, found_c, name);
}

/* package.loaders[4]: "a.b" from the library of "a" (all-in-one) */
static int searcher_croot(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	const char *dot = strchr(name, '.');
	char root[256];

	if (!dot)
		return 0;
	snprintf(root, sizeof(root), "%.*s", (int)(dot - name), name);
	return search(L, "cpath", root, found_c, name);
}

/* loadfile(path): through the walk; loadfile() reads stdin as before */
static int l_loadfile(lua_State *L)
{
	const char *path = luaL_optstring(L, 1, NULL);
	int base = lua_gettop(L), rc;

	if (!path) {
		lua_pushvalue(L, lua_upvalueindex(1));
		lua_call(L, 0, LUA_MULTRET);
		return lua_gettop(L) - base;
	}
	rc = load_lua_file(L, path);
	if (rc == 0)
		return 1;
	lua_pushnil(L);
	lua_insert(L, -2);
	return 2;
}

/* dofile(path): loadfile, then call; errors are raised */
static int l_dofile(lua_State *L)
{
	const char *path = luaL_optstring(L, 1, NULL);
	int base = lua_gettop(L);

	if (!path) {
		lua_pushvalue(L, lua_upvalueindex(1));
		lua_call(L, 0, LUA_MULTRET);
		return lua_gettop(L) - base;
	}
	if (load_lua_file(L, path) != 0)
		return lua_error(L);
	lua_call(L, 0, LUA_MULTRET);
	return lua_gettop(L) - base;
}

/* package.loadlib(path, sym): through the walk */
static int l_loadlib(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	const char *sym = luaL_checkstring(L, 2);
	int err = 0;
	void *h = open_native(L, path, &err);
	lua_CFunction f;

	if (!h) {
		lua_pushnil(L);
		lua_insert(L, -2);
		lua_pushstring(L, "open");
		return 3;
	}
	f = (lua_CFunction)(uintptr_t)dlsym(h, sym);
	if (!f) {
		lua_pushnil(L);
		lua_pushfstring(L, "%s: undefined symbol: %s", path, sym);
		lua_pushstring(L, "init");
		return 3;
	}
	lua_pushcfunction(L, f);
	return 1;
}

/* The directory part of a template ("/a/b/?.lua" -> "/a/b"). */
static void template_dir(char *out, size_t n, const char *tpl, size_t tl)
{
	const char *q = memchr(tpl, '?', tl);
	size_t upto = q ? (size_t)(q - tpl) : tl;

	while (upto > 0 && tpl[upto - 1] != '/')
		upto--;
	if (upto > 1)
		upto--; /* drop the trailing slash */
	snprintf(out, n, "%.*s", (int)upto, tpl);
}

/* Does the entry t[0..tl) occur in the ';' list `all` before t? */
static int seen_before(const char *all, const char *t, size_t tl)
{
	while (all < t) {
		const char *e = strchr(all, ';');
		size_t l = e ? (size_t)(e - all) : strlen(all);

		if (l == tl && memcmp(all, t, tl) == 0)
			return 1;
		all += l + (e ? 1 : 0);
	}
	return 0;
}

/* package[field] without relative entries (nor repeated ones); entries that came from the
 * environment variable env must lie in folders that pass the check.
 * Each dropped entry the user asked for gets one line on stderr. */
static void clean_path(lua_State *L, const char *field, const char *env)
{
	const char *from_env = getenv(env);
	const char *t;
	luaL_Buffer b;
	int first = 1;

	const char *all;

	lua_getglobal(L, "package");
	lua_getfield(L, -1, field);
	all = t = lua_tostring(L, -1);
	luaL_buffinit(L, &b);
	while (t && *t) {
		const char *end = strchr(t, ';');
		size_t tl = end ? (size_t)(end - t) : strlen(t);
		int keep = tl > 0 && !seen_before(all, t, tl);
		int asked = 0;

		if (keep && from_env) {
			/* was this entry written in the variable? */
			const char *s = from_env;

			while (*s) {
				const char *e = strchr(s, ';');
				size_t sl = e ? (size_t)(e - s) : strlen(s);

				if (sl == tl && memcmp(s, t, tl) == 0) {
					asked = 1;
					break;
				}
				s += sl + (e ? 1 : 0);
			}
		}
		if (keep && t[0] != '/') {
			keep = 0;
			if (asked)
				fprintf(stderr,
				        "denet: ignoring %s entry '%.*s': relative entries are never searched "
				        "(use an absolute path)\n",
				        env, (int)tl, t);
		} else if (keep && asked && dn_trust_enforced()) {
			char dir[PATH_MAX], why[DN_ERRBUF];
			int rc;

			template_dir(dir, sizeof(dir), t, tl);
			rc = dn_trust_dir(dir, why, sizeof(why));
			if (rc == -EPERM || rc == -ELOOP) {
				keep = 0;
				fprintf(stderr, "denet: ignoring %s entry '%.*s': %s\n", env, (int)tl, t, why);
			}
		}
		if (keep) {
			if (!first)
				luaL_addchar(&b, ';');
			luaL_addlstring(&b, t, tl);
			first = 0;
		}
		t += tl + (end ? 1 : 0);
	}
	luaL_pushresult(&b);
	/* stack: package, old, new */
	lua_setfield(L, -3, field);
	lua_pop(L, 2);
}

void dn_trust_install(lua_State *L)
{
	static const lua_CFunction searchers[] = { searcher_lua, searcher_c, searcher_croot };
	int i;

	clean_path(L, "path", "LUA_PATH");
	clean_path(L, "cpath", "LUA_CPATH");
	/* stack: package, loaders */
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "loaders");
	for (i = 0; i < 3; i++) {
		lua_pushcfunction(L, searchers[i]);
		lua_rawseti(L, -2, i + 2);
	}
	lua_pop(L, 1);
	lua_pushcfunction(L, l_loadlib);
	lua_setfield(L, -2, "loadlib");
	lua_pop(L, 1);
	/* the originals stay as upvalues for the stdin forms */
	lua_getglobal(L, "loadfile");
	lua_pushcclosure(L, l_loadfile, 1);
	lua_setglobal(L, "loadfile");
	lua_getglobal(L, "dofile");
	lua_pushcclosure(L, l_dofile, 1);
	lua_setglobal(L, "dofile");
}

void dn_trust_open_lua(lua_State *L)
{
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "trust_read", l_trust_read },
		{ "trust_dir", l_trust_dir },
		{ "trust_policy", l_trust_policy },
		{ "trust_allow", l_trust_allow },
		{ NULL, NULL },
	};
	/* clang-format on */
	dn_vm_setfuncs(L, fns);
}
