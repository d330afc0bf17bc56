/*
 * dn_srcline.c - source lines and inlined functions of user addresses,
 * from a file's DWARF (the file's own, its debug file under
 * /usr/lib/debug or by .gnu_debuglink, or a debuginfod server's when
 * DEBUGINFOD_URLS is set: elfutils' libdwfl finds it).
 *
 * dn_srcline(path, ino, vaddr, out, max) gives the frames at a file
 * address, innermost first: each inlined function (its name, and the
 * line in it), then the function they were inlined into (its line is the
 * call site of the one inside it), as `eu-stack -i -s` and
 * `perf report --inline` show them. Each file's Dwfl is opened once and
 * kept for the life of the process.
 */
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <stdlib.h>
#include <string.h>

#include "dn.h"

struct srcfile {
	char *path;
	uint64_t ino;
	Dwfl *dwfl;
	Dwfl_Module *mod;
	struct srcfile *next;
};

static struct srcfile *files;

static char *debuginfo_path;
static const Dwfl_Callbacks callbacks = {
	.find_elf = dwfl_build_id_find_elf,
	.find_debuginfo = dwfl_standard_find_debuginfo,
	.section_address = dwfl_offline_section_address,
	.debuginfo_path = &debuginfo_path,
};

static struct srcfile *srcfile_get(const char *path, uint64_t ino)
{
	struct srcfile *f;

	for (f = files; f; f = f->next)
		if (f->ino == ino && strcmp(f->path, path) == 0)
			return f;
	f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->path = strdup(path);
	f->ino = ino;
	if (!f->path) {
		free(f);
		return NULL;
	}
	f->dwfl = dwfl_begin(&callbacks);
	if (f->dwfl) {
		dwfl_report_begin(f->dwfl);
		/* at base 0: module addresses are the file's own */
		f->mod = dwfl_report_elf(f->dwfl, path, path, -1, 0, false);
		dwfl_report_end(f->dwfl, NULL, NULL);
	}
	f->next = files;
	files = f;
	return f;
}

/* The name of a function's DIE: its linkage name (C++: mangled, the
 * caller demangles it), else its name, through abstract origins. */
static const char *die_name(Dwarf_Die *die)
{
	Dwarf_Attribute a;
	const char *n = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_linkage_name, &a));

	if (!n)
		n = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_MIPS_linkage_name, &a));
	if (!n)
		n = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_name, &a));
	return n;
}

/* The call site of inlined subroutine die: file (from cu's file table)
 * and line; 0 when it has none. */
static int call_site(Dwarf_Die *cu, Dwarf_Die *die, const char **file, int *line)
{
	Dwarf_Attribute a;
	Dwarf_Word fileno = 0, lineno = 0;
	Dwarf_Files *fs;
	size_t nfiles;

	if (dwarf_formudata(dwarf_attr(die, DW_AT_call_file, &a), &fileno) != 0 ||
	    dwarf_formudata(dwarf_attr(die, DW_AT_call_line, &a), &lineno) != 0)
		return 0;
	if (dwarf_getsrcfiles(cu, &fs, &nfiles) != 0 || fileno >= nfiles)
		return 0;
	*file = dwarf_filesrc(fs, fileno, NULL, NULL);
	*line = (int)lineno;
	return *file != NULL;
}

int dn_srcline(const char *path, uint64_t ino, uint64_t vaddr, struct dn_srcframe *out, int max)
{
	struct srcfile *f = srcfile_get(path, ino);
	Dwarf_Addr bias = 0;
	Dwarf_Die *cu, *scopes = NULL;
	Dwfl_Line *ln;
	const char *file = NULL;
	int line = 0, n = 0, i, nscopes;

	if (!f || !f->mod || max <= 0)
		return 0;
	ln = dwfl_module_getsrc(f->mod, vaddr);
	if (ln)
		file = dwfl_lineinfo(ln, NULL, &line, NULL, NULL, NULL);
	cu = dwfl_module_addrdie(f->mod, vaddr, &bias);
	nscopes = cu ? dwarf_getscopes(cu, vaddr - bias, &scopes) : 0;
	i = 0;
	while (i < nscopes && n < max) {
		int tag = dwarf_tag(&scopes[i]);

		if (tag != DW_TAG_inlined_subroutine && tag != DW_TAG_subprogram) {
			i++;
			continue;
		}
		out[n].name = die_name(&scopes[i]);
		out[n].file = file;
		out[n].line = line;
		out[n].inlined = tag == DW_TAG_inlined_subroutine;
		n++;
		if (tag == DW_TAG_subprogram)
			break;
		/* the function it was inlined into: at its call site; its scopes
		 * are the inlined instance's parents (dwarf_getscopes went on
		 * into the inlined function's abstract origin instead) */
		if (!call_site(cu, &scopes[i], &file, &line)) {
			file = NULL;
			line = 0;
		}
		Dwarf_Die *outer = NULL;
		int nouter = dwarf_getscopes_die(&scopes[i], &outer);

		free(scopes);
		scopes = outer;
		nscopes = nouter;
		i = 1;
	}
	free(scopes);
	if (n == 0 && file && max > 0) {
		/* a line, no function DIE */
		out[0].name = NULL;
		out[0].file = file;
		out[0].line = line;
		out[0].inlined = 0;
		n = 1;
	}
	return n;
}
