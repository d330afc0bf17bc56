/*
 * dn_proc.c - child processes started "held": forked, set up, and stopped
 * just before exec until resume() lets them go, so probes attached in
 * between see the command's first instruction.
 *
 * Depends on Linux pidfds (the loop watches one to learn of the exit) and
 * wait4 for status and rusage. A child is a userdata "denet.proc"; letting
 * it be collected while still held makes the child exit without running
 * the command (its go-pipe closes).
 *
 * A command still running when denet exits (an error, a signal, or a
 * script that never waited) is sent SIGTERM by the cleanup registry, so no
 * traced command outlives its tracer unnoticed; when denet exits without
 * cleanup (a second Ctrl-C), PR_SET_PDEATHSIG sends the same SIGTERM.
 *
 * The held child waits on a pipe: one byte means exec, EOF means give up.
 * A second, close-on-exec pipe reports exec's errno, so resume() can tell
 * "not executable" from a command that ran and exited 127.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "dn.h"

#define PROC_MT "denet.proc"

struct dn_proc {
	pid_t pid;
	int go_fd;  /* write end of the go pipe while held, else -1 */
	int err_fd; /* read end of the exec-error pipe until resumed */
	int pidfd;
	int reaped;
	int status; /* raw wait status once reaped */
	struct rusage ru;
	char *path;
};

static void proc_release(void *obj)
{
	struct dn_proc *p = obj;

	if (p->go_fd >= 0) {
		close(p->go_fd); /* a held child exits without exec */
		p->go_fd = -1;
	} else if (!p->reaped && p->pidfd >= 0) {
		syscall(SYS_pidfd_send_signal, p->pidfd, SIGTERM, NULL, 0);
	}
	free(p->path);
	p->path = NULL;
}

/* Find argv0 the way execvp would; 0 and the path, or -errno. */
static int resolve_cmd(const char *cmd, char *out, size_t outsz)
{
	const char *path, *p;
	struct stat st;
	int err = ENOENT;

	if (strchr(cmd, '/')) {
		if (stat(cmd, &st) != 0)
			return -errno;
		if (S_ISDIR(st.st_mode))
			return -EISDIR;
		if (access(cmd, X_OK) != 0)
			return -EACCES;
		snprintf(out, outsz, "%s", cmd);
		return 0;
	}
	path = getenv("PATH");
	if (!path)
		path = "/usr/local/bin:/usr/bin:/bin";
	for (p = path; *p;) {
		const char *end = strchr(p, ':');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		snprintf(out, outsz, "%.*s/%s", (int)len, len ? p : ".", cmd);
		if (stat(out, &st) == 0 && !S_ISDIR(st.st_mode)) {
			if (access(out, X_OK) == 0)
				return 0;
			err = EACCES;
		}
		p += len;
		if (*p == ':')
			p++;
	}
	return -err;
}

/* Redirect fd to what spec names: "inherit", "null", a path (written:
 * truncated), or an fd number. Runs in the child. */
static int child_redirect(int fd, int kind, const char *path, int srcfd)
{
	int nfd;

	switch (kind) {
	case 0:
		return 0;
	case 1:
		nfd = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
		break;
	case 2:
		nfd = fd == 0 ? open(path, O_RDONLY) : open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		break;
	default:
		return dup2(srcfd, fd) < 0 ? -1 : 0;
	}
	if (nfd < 0)
		return -1;
	if (nfd != fd) {
		if (dup2(nfd, fd) < 0)
			return -1;
		close(nfd);
	}
	return 0;
}

struct redir {
	int kind; /* 0 inherit, 1 null, 2 path, 3 fd */
	const char *path;
	int fd;
};

static void get_redir(lua_State *L, int opts, const char *name, struct redir *r)
{
	r->kind = 0;
	r->path = NULL;
	r->fd = -1;
	if (opts == 0)
		return;
	lua_getfield(L, opts, name);
	if (lua_isnumber(L, -1)) {
		r->kind = 3;
		r->fd = (int)lua_tointeger(L, -1);
	} else if (lua_isstring(L, -1)) {
		const char *s = lua_tostring(L, -1);

		if (strcmp(s, "inherit") == 0)
			r->kind = 0;
		else if (strcmp(s, "null") == 0)
			r->kind = 1;
		else {
			r->kind = 2;
			r->path = s; /* kept alive by the opts table */
		}
	} else if (!lua_isnil(L, -1)) {
		luaL_error(L, "spawn option %s must be \"inherit\", \"null\", a path or an fd", name);
	}
	lua_pop(L, 1);
}

/* What a spawned child is given: its command, redirections and folder,
 * and the pipes it is held and reports through. */
struct spawn_plan {
	char path[PATH_MAX];
	const char **argv;
	struct redir rin, rout, rerr;
	const char *cwd;
	int go[2]; /* resume() writes a byte: exec */
	int ep[2]; /* the child writes errno when its set-up or exec fails */
	int rp[2]; /* the child writes a byte once it is held */
};

/* the open-file limit denet was started with, given back to its commands */
static struct rlimit nofile_orig;
static int nofile_raised;

void dn_proc_raise_nofile(void)
{
	struct rlimit r;

	if (getrlimit(RLIMIT_NOFILE, &r) < 0 || r.rlim_cur >= r.rlim_max)
		return;
	nofile_orig = r;
	r.rlim_cur = r.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &r) == 0)
		nofile_raised = 1;
}

/* The child: signals as a command expects them, redirections, then held
 * until resume(), then exec. Never returns. */
static void spawn_child(struct spawn_plan *sp, pid_t parent, const sigset_t *old)
{
	char c;
	int e;

	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	signal(SIGPIPE, SIG_DFL);
	/* denet ending without its cleanup (a second Ctrl-C exits at once)
	 * still ends the command, as its cleanup would */
	prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
	if (getppid() != parent)
		_exit(127);
	sigprocmask(SIG_SETMASK, old, NULL);
	if (nofile_raised)
		setrlimit(RLIMIT_NOFILE, &nofile_orig);
	close(sp->go[1]);
	close(sp->ep[0]);
	if (child_redirect(0, sp->rin.kind, sp->rin.path, sp->rin.fd) < 0 ||
	    child_redirect(1, sp->rout.kind, sp->rout.path, sp->rout.fd) < 0 ||
	    child_redirect(2, sp->rerr.kind, sp->rerr.path, sp->rerr.fd) < 0 || (sp->cwd && chdir(sp->cwd) < 0)) {
		e = errno;
		if (write(sp->ep[1], &e, sizeof(e)) < 0)
			_exit(127);
		_exit(127);
	}
	/* held: say so, and wait for resume() */
	if (write(sp->rp[1], "h", 1) != 1)
		_exit(127);
	close(sp->rp[1]);
	if (read(sp->go[0], &c, 1) != 1)
		_exit(127);
	execv(sp->path, (char *const *)sp->argv);
	e = errno;
	if (write(sp->ep[1], &e, sizeof(e)) < 0)
		_exit(127);
	_exit(127);
}

/* The three pipes of a plan: 0, or -errno with none left open. */
static int spawn_pipes(struct spawn_plan *sp)
{
	int *pipes[3] = { sp->go, sp->ep, sp->rp }, i, err;

	for (i = 0; i < 3; i++)
		if (pipe2(pipes[i], O_CLOEXEC) < 0) {
			err = errno;
			while (i-- > 0) {
				close(pipes[i][0]);
				close(pipes[i][1]);
			}
			return -err;
		}
	return 0;
}

/* Fork the child held: its pid (the parent's ends of the pipes kept in
 * sp), or -errno. Returns once the child said it is held (or its set-up
 * failed: resume() reports why), so no syscall of its set-up may fall in
 * a tracer's window opened after spawn() returns. */
static pid_t spawn_held(struct spawn_plan *sp)
{
	sigset_t all, old;
	pid_t pid, parent = getpid();
	char h;
	ssize_t got;

	/* no signal handler of ours may run in the child before it resets them */
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, &old);
	pid = fork();
	if (pid == 0)
		spawn_child(sp, parent, &old);
	sigprocmask(SIG_SETMASK, &old, NULL);
	close(sp->go[0]);
	close(sp->ep[1]);
	close(sp->rp[1]);
	if (pid < 0) {
		int err = errno;

		close(sp->go[1]);
		close(sp->ep[0]);
		close(sp->rp[0]);
		return -err;
	}
	/* a byte: held; EOF: its set-up failed */
	do
		got = read(sp->rp[0], &h, 1);
	while (got < 0 && errno == EINTR);
	close(sp->rp[0]);
	return pid;
}

/* The plan of spawn(argv, opts) from the Lua arguments; raises for bad
 * ones. argv's strings stay referenced by the argv table. */
static void spawn_args(lua_State *L, struct spawn_plan *sp)
{
	int n, i, opts = 0;

	luaL_checktype(L, 1, LUA_TTABLE);
	n = (int)lua_objlen(L, 1);
	if (n < 1)
		luaL_error(L, "spawn: argv is empty");
	if (lua_istable(L, 2)) {
		opts = 2;
		lua_getfield(L, 2, "cwd");
		sp->cwd = lua_tostring(L, -1);
		lua_pop(L, 1);
	}
	get_redir(L, opts, "stdin", &sp->rin);
	get_redir(L, opts, "stdout", &sp->rout);
	get_redir(L, opts, "stderr", &sp->rerr);
	sp->argv = lua_newuserdata(L, sizeof(*sp->argv) * (size_t)(n + 1));
	for (i = 0; i < n; i++) {
		lua_rawgeti(L, 1, i + 1);
		if (!lua_isstring(L, -1))
			luaL_error(L, "spawn: argv[%d] is not a string", i + 1);
		sp->argv[i] = lua_tostring(L, -1);
		lua_pop(L, 1);
	}
	sp->argv[n] = NULL;
}

/* core.spawn(argv{}, opts{stdin,stdout,stderr,cwd}|nil) -> proc | nil, msg, errno */
static int l_spawn(lua_State *L)
{
	struct spawn_plan sp;
	struct dn_proc *p;
	pid_t pid;
	int r;

	memset(&sp, 0, sizeof(sp));
	spawn_args(L, &sp);
	r = resolve_cmd(sp.argv[0], sp.path, sizeof(sp.path));
	if (r < 0)
		return dn_vm_fail(L, -r, "cannot execute '%s': %s", sp.argv[0],
		                  r == -ENOENT ? "command not found" : strerror(-r));

	p = lua_newuserdata(L, sizeof(*p));
	memset(p, 0, sizeof(*p));
	p->go_fd = p->err_fd = p->pidfd = -1;
	luaL_getmetatable(L, PROC_MT);
	lua_setmetatable(L, -2);
	r = spawn_pipes(&sp);
	if (r < 0)
		return dn_vm_fail(L, -r, "pipe: %s", strerror(-r));
	pid = spawn_held(&sp);
	if (pid < 0)
		return dn_vm_fail(L, -pid, "fork: %s", strerror(-pid));
	p->pid = pid;
	p->go_fd = sp.go[1];
	p->err_fd = sp.ep[0];
	p->path = strdup(sp.path);
	p->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	dn_cleanup_add(p, proc_release);
	return 1;
}

static struct dn_proc *check_proc(lua_State *L)
{
	return luaL_checkudata(L, 1, PROC_MT);
}

/* p:resume() -> true | nil, msg, errno (the command could not be executed) */
static int l_resume(lua_State *L)
{
	struct dn_proc *p = check_proc(L);
	char c = 'g';
	int e = 0;
	ssize_t n;

	if (p->go_fd < 0)
		return luaL_error(L, "process %d was already resumed", (int)p->pid);
	/* a child that failed its set-up has closed the pipe: its errno
	 * follows on err_fd either way */
	n = write(p->go_fd, &c, 1);
	(void)n;
	close(p->go_fd);
	p->go_fd = -1;
	/* EOF: exec succeeded (the pipe was close-on-exec); else its errno */
	do
		n = read(p->err_fd, &e, sizeof(e));
	while (n < 0 && errno == EINTR);
	close(p->err_fd);
	p->err_fd = -1;
	if (n == sizeof(e)) {
		/* the child exits 127 at once: reap it so no zombie remains */
		waitpid(p->pid, &p->status, 0);
		p->reaped = 1;
		return dn_vm_fail(L, e, "cannot start '%s': %s", p->path, strerror(e));
	}
	lua_pushboolean(L, 1);
	return 1;
}

static void push_rusage(lua_State *L, const struct rusage *ru)
{
	lua_createtable(L, 0, 8);
	lua_pushnumber(L, (lua_Number)ru->ru_utime.tv_sec + ru->ru_utime.tv_usec / 1e6);
	lua_setfield(L, -2, "utime");
	lua_pushnumber(L, (lua_Number)ru->ru_stime.tv_sec + ru->ru_stime.tv_usec / 1e6);
	lua_setfield(L, -2, "stime");
	lua_pushnumber(L, (lua_Number)ru->ru_maxrss);
	lua_setfield(L, -2, "maxrss_kb");
	lua_pushnumber(L, (lua_Number)ru->ru_minflt);
	lua_setfield(L, -2, "minflt");
	lua_pushnumber(L, (lua_Number)ru->ru_majflt);
	lua_setfield(L, -2, "majflt");
	lua_pushnumber(L, (lua_Number)ru->ru_nvcsw);
	lua_setfield(L, -2, "nvcsw");
	lua_pushnumber(L, (lua_Number)ru->ru_nivcsw);
	lua_setfield(L, -2, "nivcsw");
	lua_pushnumber(L, (lua_Number)ru->ru_inblock);
	lua_setfield(L, -2, "inblock");
	lua_pushnumber(L, (lua_Number)ru->ru_oublock);
	lua_setfield(L, -2, "oublock");
}

/* Exit code as a shell reports it: the code, or 128+signal. */
static int status_code(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return -1;
}

/* p:try_wait() -> code, rusage{}, signal|nil, core dumped  |  false (still running)
 * Never blocks; the Lua side waits on the pidfd through the loop. */
static int l_try_wait(lua_State *L)
{
	struct dn_proc *p = check_proc(L);

	if (!p->reaped) {
		pid_t r;

		do
			r = wait4(p->pid, &p->status, WNOHANG, &p->ru);
		while (r < 0 && errno == EINTR);
		if (r == 0) {
			lua_pushboolean(L, 0);
			return 1;
		}
		if (r < 0)
			return dn_vm_fail(L, errno, "wait for %d: %s", (int)p->pid, strerror(errno));
		p->reaped = 1;
		if (p->pidfd >= 0) {
			close(p->pidfd);
			p->pidfd = -1;
		}
	}
	lua_pushinteger(L, status_code(p->status));
	push_rusage(L, &p->ru);
	if (WIFSIGNALED(p->status)) {
		lua_pushinteger(L, WTERMSIG(p->status));
		lua_pushboolean(L, WCOREDUMP(p->status));
		return 4;
	}
	lua_pushnil(L);
	return 3;
}

/* p:kill(sig) -> true | nil, msg, errno. Through the pidfd, so a reaped
 * and reused pid is never signalled. */
static int l_kill(lua_State *L)
{
	struct dn_proc *p = check_proc(L);
	int sig = (int)luaL_optinteger(L, 2, SIGTERM);
	int r;

	if (p->reaped)
		return dn_vm_fail(L, ESRCH, "process %d has exited", (int)p->pid);
	if (p->pidfd >= 0)
		r = (int)syscall(SYS_pidfd_send_signal, p->pidfd, sig, NULL, 0);
	else
		r = kill(p->pid, sig);
	if (r < 0)
		return dn_vm_fail(L, errno, "kill %d: %s", (int)p->pid, strerror(errno));
	lua_pushboolean(L, 1);
	return 1;
}

static int l_pid(lua_State *L)
{
	lua_pushinteger(L, check_proc(L)->pid);
	return 1;
}

static int l_pidfd(lua_State *L)
{
	lua_pushinteger(L, check_proc(L)->pidfd);
	return 1;
}

static int l_held(lua_State *L)
{
	lua_pushboolean(L, check_proc(L)->go_fd >= 0);
	return 1;
}

static int l_proc_gc(lua_State *L)
{
	struct dn_proc *p = check_proc(L);

	dn_cleanup_remove(p);
	if (p->go_fd >= 0) {
		/* never resumed: closing the go pipe makes it exit; reap it */
		close(p->go_fd);
		p->go_fd = -1;
		if (!p->reaped && waitpid(p->pid, &p->status, 0) == p->pid)
			p->reaped = 1;
	}
	if (p->err_fd >= 0)
		close(p->err_fd);
	if (p->pidfd >= 0)
		close(p->pidfd);
	p->err_fd = p->pidfd = -1;
	free(p->path);
	p->path = NULL;
	return 0;
}

/* core.reap(pid) -> code, rusage | nil: reap one exited child by pid
 * (orphans re-parented to us as subreaper), never blocking; -1 reaps any. */
static int l_reap(lua_State *L)
{
	int status;
	struct rusage ru;
	pid_t r = wait4((pid_t)luaL_checkinteger(L, 1), &status, WNOHANG, &ru);

	if (r <= 0)
		return 0;
	lua_pushinteger(L, status_code(status));
	push_rusage(L, &ru);
	lua_pushinteger(L, r);
	return 3;
}

/* core.children_rusage() -> rusage of every child denet has reaped */
static int l_children_rusage(lua_State *L)
{
	struct rusage ru;

	getrusage(RUSAGE_CHILDREN, &ru);
	push_rusage(L, &ru);
	return 1;
}

/* core.set_subreaper(on) -> true | nil, msg, errno */
static int l_set_subreaper(lua_State *L)
{
	if (prctl(PR_SET_CHILD_SUBREAPER, lua_toboolean(L, 1) ? 1 : 0, 0, 0, 0) < 0)
		return dn_vm_fail(L, errno, "prctl(PR_SET_CHILD_SUBREAPER): %s", strerror(errno));
	lua_pushboolean(L, 1);
	return 1;
}

/* core.which(cmd) -> path | nil, msg, errno */
static int l_which(lua_State *L)
{
	char path[PATH_MAX];
	const char *cmd = luaL_checkstring(L, 1);
	int r = resolve_cmd(cmd, path, sizeof(path));

	if (r < 0)
		return dn_vm_fail(L, -r, "cannot execute '%s': %s", cmd,
		                  r == -ENOENT ? "command not found" : strerror(-r));
	lua_pushstring(L, path);
	return 1;
}

void dn_proc_open(lua_State *L)
{
	/* clang-format off */
	static const luaL_Reg methods[] = {
		{ "resume", l_resume },
		{ "try_wait", l_try_wait },
		{ "kill", l_kill },
		{ "pid", l_pid },
		{ "pidfd", l_pidfd },
		{ "held", l_held },
		{ NULL, NULL },
	};
	/* clang-format on */
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "spawn", l_spawn },
		{ "reap", l_reap },
		{ "children_rusage", l_children_rusage },
		{ "set_subreaper", l_set_subreaper },
		{ "which", l_which },
		{ NULL, NULL },
	};
	/* clang-format on */
	dn_vm_newclass(L, PROC_MT, l_proc_gc, methods);
	dn_vm_setfuncs(L, fns);
}
