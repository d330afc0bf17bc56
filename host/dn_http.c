/*
 * dn_http.c - the /metrics endpoint: libmicrohttpd serving, from its own
 * thread, the latest metrics text that Lua hands over.
 *
 * Lua builds the exposition (lib/denet/metrics.lua) after a sample and
 * swaps it in with srv:set(); a scrape copies the current text under a
 * mutex and never waits for Lua, so scraping cannot delay sampling, and
 * sampling never waits for a slow scraper. Two bodies are kept: the
 * Prometheus text format and OpenMetrics, chosen by the request's Accept
 * header.
 *
 * Depends on libmicrohttpd and dn_cleanup_* (the daemon stops on every exit
 * path). The daemon's thread blocks SIGINT/SIGTERM/SIGHUP, so they reach
 * the main thread (and interrupt its waits) as before.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "dn.h"

#define HTTP_MT "denet.http"

#define CT_TEXT "text/plain; version=0.0.4; charset=utf-8"
#define CT_OM "application/openmetrics-text; version=1.0.0; charset=utf-8"

struct body {
	char *data;
	size_t len;
};

struct dn_http {
	struct MHD_Daemon *d;
	pthread_mutex_t lock;
	struct body text, om;
	unsigned long scrapes; /* /metrics responses queued */
	int port;
};

static int wants_openmetrics(struct MHD_Connection *c)
{
	const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);

	return accept && strstr(accept, "application/openmetrics-text") != NULL;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned int status, const char *ctype, const char *data,
                             size_t len)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
	enum MHD_Result ret;

	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **state)
{
	static const char index_page[] = "<html><body><a href=\"/metrics\">/metrics</a></body></html>\n";
	static const char not_found[] = "not found: denet serves /metrics\n";
	struct dn_http *h = cls;
	enum MHD_Result ret;
	struct body *b;
	int om;

	(void)version;
	(void)upload;
	(void)upload_size;
	(void)state;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", "GET only\n", 9);
	if (strcmp(url, "/") == 0)
		return reply(c, MHD_HTTP_OK, "text/html", index_page, sizeof(index_page) - 1);
	if (strcmp(url, "/metrics") != 0)
		return reply(c, MHD_HTTP_NOT_FOUND, "text/plain", not_found, sizeof(not_found) - 1);
	om = wants_openmetrics(c);
	pthread_mutex_lock(&h->lock);
	b = om ? &h->om : &h->text;
	ret = reply(c, MHD_HTTP_OK, om ? CT_OM : CT_TEXT, b->data ? b->data : "", b->data ? b->len : 0);
	h->scrapes++;
	pthread_mutex_unlock(&h->lock);
	return ret;
}

static void http_release(void *obj)
{
	struct dn_http *h = obj;

	if (h->d) {
		MHD_stop_daemon(h->d);
		h->d = NULL;
		free(h->text.data);
		free(h->om.data);
		h->text.data = h->om.data = NULL;
		pthread_mutex_destroy(&h->lock);
	}
}

/* [ADDR:]PORT or [IPv6]:PORT -> sockaddr; default address 127.0.0.1 */
static int parse_addr(const char *spec, struct sockaddr_storage *ss, socklen_t *len, char *why, size_t n)
{
	char host[256] = "127.0.0.1", port[16];
	const char *colon = strrchr(spec, ':');
	struct addrinfo hints, *res = NULL;
	int rc;

	if (spec[0] == '[') {
		const char *end = strchr(spec, ']');

		if (!end || end[1] != ':' || (size_t)(end - spec - 1) >= sizeof(host)) {
			snprintf(why, n, "'%s' is not [ADDR]:PORT", spec);
			return -1;
		}
		memcpy(host, spec + 1, (size_t)(end - spec - 1));
		host[end - spec - 1] = '\0';
		snprintf(port, sizeof(port), "%s", end + 2);
	} else if (colon) {
		if ((size_t)(colon - spec) >= sizeof(host)) {
			snprintf(why, n, "address too long in '%s'", spec);
			return -1;
		}
		memcpy(host, spec, (size_t)(colon - spec));
		host[colon - spec] = '\0';
		snprintf(port, sizeof(port), "%s", colon + 1);
	} else {
		snprintf(port, sizeof(port), "%s", spec);
	}
	if (port[0] == '\0' || strspn(port, "0123456789") != strlen(port) || atoi(port) > 65535) {
		snprintf(why, n, "'%s' is not a port (0-65535) in '%s'", port, spec);
		return -1;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0 || !res) {
		snprintf(why, n, "cannot resolve '%s': %s", host, gai_strerror(rc));
		return -1;
	}
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

/* core.http_serve(spec) -> server | nil, msg, errno: serve /metrics on
 * [ADDR:]PORT (PORT 0: any free port; srv:port() tells which) */
static int l_http_serve(lua_State *L)
{
	const char *spec = luaL_checkstring(L, 1);
	struct sockaddr_storage ss;
	socklen_t slen = 0;
	char why[300];
	sigset_t block, old;
	const union MHD_DaemonInfo *info;
	struct dn_http *h;
	unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
	int err;

	if (parse_addr(spec, &ss, &slen, why, sizeof(why)) < 0)
		return dn_vm_fail(L, EINVAL, "--prometheus: %s", why);
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	h = lua_newuserdata(L, sizeof(*h));
	memset(h, 0, sizeof(*h));
	pthread_mutex_init(&h->lock, NULL);
	/* the daemon's thread inherits this mask: signals stay the main thread's */
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	errno = 0;
	h->d = MHD_start_daemon(flags, 0, NULL, NULL, handle, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
	                        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)10, MHD_OPTION_CONNECTION_LIMIT,
	                        (unsigned int)64, MHD_OPTION_END);
	err = errno;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!h->d) {
		pthread_mutex_destroy(&h->lock);
		return dn_vm_fail(L, err ? err : EADDRINUSE, "--prometheus: cannot listen on %s: %s", spec,
		                  strerror(err ? err : EADDRINUSE));
	}
	info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
	h->port = info ? info->port : 0;
	luaL_getmetatable(L, HTTP_MT);
	lua_setmetatable(L, -2);
	dn_cleanup_add(h, http_release);
	return 1;
}

static struct dn_http *check_http(lua_State *L)
{
	struct dn_http *h = luaL_checkudata(L, 1, HTTP_MT);

	if (!h->d)
		luaL_error(L, "the metrics server is closed");
	return h;
}

static void body_set(struct body *b, const char *s, size_t n)
{
	char *p = malloc(n + 1);

	if (!p)
		return; /* keep serving the previous text */
	memcpy(p, s, n);
	p[n] = '\0';
	free(b->data);
	b->data = p;
	b->len = n;
}

/* srv:set(text, openmetrics): what the next scrapes get */
static int l_http_set(lua_State *L)
{
	struct dn_http *h = check_http(L);
	size_t tl, ol;
	const char *t = luaL_checklstring(L, 2, &tl);
	const char *o = luaL_checklstring(L, 3, &ol);

	pthread_mutex_lock(&h->lock);
	body_set(&h->text, t, tl);
	body_set(&h->om, o, ol);
	pthread_mutex_unlock(&h->lock);
	return 0;
}

/* srv:scrapes() -> how many /metrics responses were served */
static int l_http_scrapes(lua_State *L)
{
	struct dn_http *h = check_http(L);
	unsigned long n;

	pthread_mutex_lock(&h->lock);
	n = h->scrapes;
	pthread_mutex_unlock(&h->lock);
	lua_pushnumber(L, (lua_Number)n);
	return 1;
}

static int l_http_port(lua_State *L)
{
	lua_pushinteger(L, check_http(L)->port);
	return 1;
}

static int l_http_close(lua_State *L)
{
	struct dn_http *h = luaL_checkudata(L, 1, HTTP_MT);

	if (h->d) {
		dn_cleanup_remove(h);
		http_release(h);
	}
	return 0;
}

void dn_http_open(lua_State *L)
{
	/* clang-format off */
	static const luaL_Reg methods[] = {
		{ "set", l_http_set },
		{ "scrapes", l_http_scrapes },
		{ "port", l_http_port },
		{ "close", l_http_close },
		{ NULL, NULL },
	};
	/* clang-format on */
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "http_serve", l_http_serve },
		{ NULL, NULL },
	};
	/* clang-format on */

	dn_vm_newclass(L, HTTP_MT, l_http_close, methods);
	dn_vm_setfuncs(L, fns);
}
