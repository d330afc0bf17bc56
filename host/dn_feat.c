/*
 * dn_feat.c - what the running kernel's BPF can do, asked of the kernel
 * itself: map types, program types and helpers are probed with libbpf's
 * libbpf_probe_bpf_*() (a tiny program or map is created and the verifier
 * or the map code answers), batch map operations with a real call.
 *
 * Depends on libbpf (Debian's libbpf1; libbcc loads through it too).
 * Lua decides what each answer means (lib/denet/features.lua): which
 * variant of a program to compile, and what to tell the user.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "dn.h"

/* Does the kernel accept batch lookups (5.6)? An empty hash answers
 * ENOENT when it does, EINVAL when the command is unknown. */
static int probe_batch(void)
{
	__u32 keys[1], vals[1], out = 0, count = 1;
	int fd = bpf_map_create(BPF_MAP_TYPE_HASH, NULL, 4, 4, 1, NULL);
	int rc;

	if (fd < 0)
		return -errno;
	rc = bpf_map_lookup_batch(fd, NULL, &out, keys, vals, &count, NULL);
	rc = (rc == 0 || errno == ENOENT) ? 1 : 0;
	close(fd);
	return rc;
}

struct helper_probe {
	const char *name;
	enum bpf_func_id id;
};

/* helpers the built-ins rely on, probed in a tracepoint program (the
 * type every built-in probe is) */
static const struct helper_probe helpers[] = {
	{ "current_task_btf", BPF_FUNC_get_current_task_btf },
	{ "task_storage_helper", BPF_FUNC_task_storage_get },
	{ "task_pt_regs", BPF_FUNC_task_pt_regs },
	{ "get_task_stack", BPF_FUNC_get_task_stack },
	{ "ringbuf_helper", BPF_FUNC_ringbuf_reserve },
	{ "probe_read_kernel", BPF_FUNC_probe_read_kernel },
	{ NULL, 0 },
};

/* core.feature_probe(name) -> true | false | nil, message
 * name: ringbuf, task_storage_map, batch, raw_tracepoint, tracing_prog,
 * or a helper of the list above. nil when the probe itself failed (no
 * privileges). */
static int l_feature_probe(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	int rc = -ENOENT, known = 1;
	const struct helper_probe *h;

	if (strcmp(name, "ringbuf") == 0)
		rc = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, NULL);
	else if (strcmp(name, "task_storage_map") == 0)
		rc = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_TASK_STORAGE, NULL);
	else if (strcmp(name, "batch") == 0)
		rc = probe_batch();
	else if (strcmp(name, "raw_tracepoint") == 0)
		rc = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_RAW_TRACEPOINT, NULL);
	else if (strcmp(name, "tracing_prog") == 0)
		rc = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_TRACING, NULL);
	else {
		for (h = helpers; h->name; h++)
			if (strcmp(name, h->name) == 0) {
				rc = libbpf_probe_bpf_helper(BPF_PROG_TYPE_TRACEPOINT, h->id, NULL);
				break;
			}
		known = h->name != NULL;
	}
	if (!known)
		return luaL_error(L, "feature_probe: unknown feature '%s'", name);
	if (rc < 0)
		return dn_vm_fail(L, -rc, "probing %s: %s", name, strerror(-rc));
	lua_pushboolean(L, rc > 0);
	return 1;
}

void dn_feat_open(lua_State *L)
{
	/* clang-format off */
	static const luaL_Reg fns[] = {
		{ "feature_probe", l_feature_probe },
		{ NULL, NULL },
	};
	/* clang-format on */
	dn_vm_setfuncs(L, fns);
}
