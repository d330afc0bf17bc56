/*
 * dn_unwind.c - unwind tables from a file's call frame information.
 *
 * A table is the file's .eh_frame (or, when that is all there is,
 * .debug_frame) turned into rows sorted by address: from each row's pc up
 * to the next row's, how the caller's frame is found (struct dn_uw_row,
 * dn_records.h). elfutils' libdw reads the CFI: each FDE's range is walked
 * with dwarf_cfi_addrframe, which gives the rule at an address and the
 * range it holds for, so one call per row. Only rules a BPF program can
 * apply become rows that unwind:
 *   - CFA = rsp + N or rbp + N, the return address at CFA - 8, rbp either
 *     kept or saved at CFA + 8k (or lost: a later rule from rbp stops);
 *   - the PLT's expression (CFA = rsp + 8, + 8 more past byte 10 or 11 of
 *     each 16-byte stub), which ld writes for .plt;
 *   - a signal frame (the CIE's 'S': glibc's __restore_rt), whose caller's
 *     registers are in the rt_sigframe's ucontext;
 *   - "end": the return address is undefined (_start, a thread's start):
 *     the stack is whole there.
 * Every other rule (a DWARF expression, a return address elsewhere) and
 * every gap between FDEs is a "stop" row: the walk ends there, marked
 * truncated, never wrong.
 *
 * dn_uw_build_elf is pure (an Elf handle in, rows out) and is what the
 * libFuzzer target feeds; core.uw_table(path) wraps it for Lua.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwelf.h>
#include <gelf.h>
#include <libelf.h>

#include <bcc/libbpf.h>
#include <bpf/bpf.h>

#include "dn.h"

/* a table larger than this is refused (one line names the file) */
#define DN_UW_MAX_ROWS (4u << 20)
#define DN_UW_MAX_CIES 4096

struct cie_enc {
	uint64_t off;
	uint8_t enc;   /* the FDE pointer encoding ('R'), DW_EH_PE_absptr if none */
	uint8_t ok;    /* its augmentation was understood */
	uint8_t z;     /* 'z': its FDEs have augmentation data before their rules */
	uint8_t small; /* its initial rules name no register past DN_UW_MAX_REG */
};

/* libdw makes room for every register up to the highest one a program of
 * rules names, at every lookup: a crafted register number in the millions
 * costs seconds and gigabytes. x86-64's are below 130. */
#define DN_UW_MAX_REG 1024

static int get_uleb(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
	const uint8_t *p = *pp;
	uint64_t r = 0;
	int shift = 0;

	while (p < end) {
		uint8_t byte = *p++;

		if (shift < 64)
			r |= (uint64_t)(byte & 0x7f) << shift;
		shift += 7;
		if (!(byte & 0x80)) {
			*pp = p;
			*v = r;
			return 0;
		}
	}
	return -1;
}

/* The operands of each extended call frame opcode (0x00-0x2f): r a
 * register, v a number (LEB128), b a block, a an address, 1 2 4 bytes;
 * NULL: not known here. */
static const char *const cfa_operands[0x30] = {
	[0x00] = "",   [0x01] = "a",  [0x02] = "1",  [0x03] = "2",  [0x04] = "4",  [0x05] = "rv", [0x06] = "r",
	[0x07] = "r",  [0x08] = "r",  [0x09] = "rr", [0x0a] = "",   [0x0b] = "",   [0x0c] = "rv", [0x0d] = "r",
	[0x0e] = "v",  [0x0f] = "b",  [0x10] = "rb", [0x11] = "rv", [0x12] = "rv", [0x13] = "v",  [0x14] = "rv",
	[0x15] = "rv", [0x16] = "rb", [0x2d] = "",   [0x2e] = "v",  [0x2f] = "rv",
};

/* 0 when a program of call frame rules [p, end) names a register past
 * DN_UW_MAX_REG; 1 otherwise (an opcode not known here: libdw decides). */
static int cfa_regs_small(const uint8_t *p, const uint8_t *end, size_t addr_size)
{
	while (p < end) {
		uint8_t op = *p++;
		const char *o;
		uint64_t v = 0;

		if ((op & 0xc0) == 0x40 || (op & 0xc0) == 0xc0)
			continue; /* advance_loc, restore: no operand */
		if ((op & 0xc0) == 0x80) {
			if (get_uleb(&p, end, &v))
				return 1;
			continue; /* offset: the register is in the opcode */
		}
		o = op < 0x30 ? cfa_operands[op] : NULL;
		if (!o)
			return 1;
		for (; *o; o++) {
			size_t skip = *o == 'a' ? addr_size : *o >= '1' && *o <= '4' ? (size_t)(*o - '0') : 0;

			if (skip) {
				if ((size_t)(end - p) < skip)
					return 1;
				p += skip;
				continue;
			}
			if (get_uleb(&p, end, &v))
				return 1;
			if (*o == 'r' && v >= DN_UW_MAX_REG)
				return 0;
			if (*o == 'b') {
				if (v > (uint64_t)(end - p))
					return 1;
				p += v;
			}
		}
	}
	return 1;
}

struct builder {
	struct dn_uw_row *rows;
	size_t n, cap;
	int too_many;
	int slow; /* FDEs given up as too costly (see fde_rows) */
};

/* An FDE whose rules take libdw longer than this to read (a crafted file:
 * a rule of a register numbered in the millions makes each lookup clear
 * that many slots) ends there; past DN_UW_SLOW_FDES of them the file has
 * no table. A real FDE takes microseconds. */
#define DN_UW_FDE_NS 100000000ull
#define DN_UW_SLOW_FDES 1

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int add_row(struct builder *b, uint64_t pc, int kind, int64_t cfa, int rbp, int aux)
{
	if (pc > UINT32_MAX)
		return 0; /* beyond what a row holds: left out (a stop by absence) */
	if (b->n == b->cap) {
		size_t cap = b->cap ? 2 * b->cap : 4096;
		void *p;

		if (cap > DN_UW_MAX_ROWS) {
			b->too_many = 1;
			return -1;
		}
		p = realloc(b->rows, cap * sizeof(*b->rows));
		if (!p)
			return -1;
		b->rows = p;
		b->cap = cap;
	}
	if (cfa < INT32_MIN || cfa > INT32_MAX)
		kind = DN_UW_STOP;
	b->rows[b->n].pc = (uint32_t)pc;
	b->rows[b->n].cfa = kind == DN_UW_STOP || kind == DN_UW_END ? 0 : (int32_t)cfa;
	b->rows[b->n].kind = (uint8_t)kind;
	b->rows[b->n].rbp = kind == DN_UW_STOP || kind == DN_UW_END ? 0 : (int8_t)rbp;
	b->rows[b->n].aux = kind == DN_UW_PLT ? (uint8_t)aux : 0;
	b->rows[b->n].pad = 0;
	b->n++;
	return 0;
}

/* The size in bytes of a pointer of encoding enc, or 0 (leb128, unknown). */
static size_t enc_size(uint8_t enc)
{
	switch (enc & 0x0f) {
	case DW_EH_PE_absptr:
	case DW_EH_PE_udata8:
	case DW_EH_PE_sdata8:
		return 8;
	case DW_EH_PE_udata4:
	case DW_EH_PE_sdata4:
		return 4;
	case DW_EH_PE_udata2:
	case DW_EH_PE_sdata2:
		return 2;
	default:
		return 0;
	}
}

/* Read a pointer of encoding enc at p (before end); at: the address p is
 * loaded at (pc-relative pointers). 0 and *v, or -1. */
static int read_ptr(const uint8_t *p, const uint8_t *end, uint8_t enc, uint64_t at, int apply, uint64_t *v)
{
	size_t sz = enc_size(enc);
	uint64_t x = 0;

	if (enc == DW_EH_PE_omit || sz == 0 || (size_t)(end - p) < sz)
		return -1;
	switch (enc & 0x0f) {
	case DW_EH_PE_udata2:
	case DW_EH_PE_sdata2: {
		uint16_t u;
		memcpy(&u, p, 2);
		x = (enc & 0x0f) == DW_EH_PE_sdata2 ? (uint64_t)(int64_t)(int16_t)u : u;
		break;
	}
	case DW_EH_PE_udata4:
	case DW_EH_PE_sdata4: {
		uint32_t u;
		memcpy(&u, p, 4);
		x = (enc & 0x0f) == DW_EH_PE_sdata4 ? (uint64_t)(int64_t)(int32_t)u : u;
		break;
	}
	default:
		memcpy(&x, p, 8);
	}
	if (apply) {
		switch (enc & 0x70) {
		case 0:
			break;
		case DW_EH_PE_pcrel:
			x += at;
			break;
		default:
			return -1; /* datarel, textrel, funcrel: not used for FDEs here */
		}
		if (enc & DW_EH_PE_indirect)
			return -1;
	}
	*v = x;
	return 0;
}

/* The FDE pointer encoding a CIE's augmentation names. */
static struct cie_enc cie_encoding(const Dwarf_CIE *c, uint64_t off, int eh)
{
	struct cie_enc r = { off, eh ? DW_EH_PE_absptr : DW_EH_PE_absptr, 1, 0, 1 };
	const char *a = c->augmentation;
	const uint8_t *p = c->augmentation_data, *end = p ? p + c->augmentation_data_size : NULL;

	r.small = (uint8_t)cfa_regs_small(c->initial_instructions, c->initial_instructions_end, 8);
	if (!a || a[0] == '\0')
		return r;
	r.z = a[0] == 'z';
	if (a[0] != 'z' || !p) {
		r.ok = 0;
		return r;
	}
	for (a++; *a; a++) {
		switch (*a) {
		case 'R':
			if (p >= end)
				goto bad;
			r.enc = *p++;
			break;
		case 'L':
			if (p >= end)
				goto bad;
			p++;
			break;
		case 'P': {
			uint8_t penc;
			size_t sz;

			if (p >= end)
				goto bad;
			penc = *p++;
			sz = enc_size(penc);
			if (sz == 0 || (size_t)(end - p) < sz)
				goto bad;
			p += sz;
			break;
		}
		case 'S':
		case 'B':
			break;
		default:
			goto bad;
		}
	}
	return r;
bad:
	r.ok = 0;
	return r;
}

/* Is ops the PLT's CFA expression: rsp + 8, + 8 past byte `*at` of the
 * 16-byte stub (breg7 8; breg16 0; lit15; and; litN; ge; lit3; shl; plus)? */
static int plt_expr(const Dwarf_Op *ops, size_t n, int *at)
{
	if (n != 9 || ops[0].atom != DW_OP_breg7 || ops[0].number != 8 || ops[1].atom != DW_OP_breg16 ||
	    ops[1].number != 0 || ops[2].atom != DW_OP_lit15 || ops[3].atom != DW_OP_and || ops[4].atom < DW_OP_lit0 ||
	    ops[4].atom > DW_OP_lit31 || ops[5].atom != DW_OP_ge || ops[6].atom != DW_OP_lit3 ||
	    ops[7].atom != DW_OP_shl || ops[8].atom != DW_OP_plus)
		return 0;
	*at = ops[4].atom - DW_OP_lit0;
	return 1;
}

/* A register saved at CFA + off: libdw writes offset(N) as call_frame_cfa,
 * plus_uconst N (or consts N, plus; or call_frame_cfa alone for 0). */
static int saved_at(const Dwarf_Op *ops, size_t n, int64_t *off)
{
	if (n == 1 && ops[0].atom == DW_OP_call_frame_cfa) {
		*off = 0;
		return 1;
	}
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

/* The row of a frame state: kind, cfa offset, rbp rule, aux. */
static void frame_row(Dwarf_Frame *f, int *kind, int64_t *cfa, int *rbp, int *aux)
{
	Dwarf_Op *ops, mem[3];
	size_t n;
	int64_t off;
	bool signal = false;
	Dwarf_Addr s, e;

	*kind = DN_UW_STOP;
	*cfa = 0;
	*rbp = 0;
	*aux = 0;
	if (dwarf_frame_info(f, &s, &e, &signal) < 0)
		return;
	if (signal) {
		*kind = DN_UW_SIGNAL;
		return;
	}
	/* the return address: undefined at the outermost frame */
	if (dwarf_frame_register(f, 16, mem, &ops, &n) != 0)
		return;
	if (n == 0 && ops == mem) {
		*kind = DN_UW_END;
		return;
	}
	if (!saved_at(ops, n, &off) || off != -8)
		return;
	/* rbp: kept, saved at CFA + 8k, or lost */
	if (dwarf_frame_register(f, 6, mem, &ops, &n) != 0)
		return;
	if (n == 0 && ops == NULL)
		*rbp = 0;
	else if (saved_at(ops, n, &off) && off < 0 && off % 8 == 0 && off / 8 > -128)
		*rbp = (int)(off / 8);
	else
		*rbp = DN_UW_RBP_LOST;
	if (dwarf_frame_cfa(f, &ops, &n) != 0)
		return;
	if (n == 1 && (ops[0].atom == DW_OP_bregx || ops[0].atom == DW_OP_breg7 || ops[0].atom == DW_OP_breg6)) {
		uint64_t reg = ops[0].atom == DW_OP_bregx ? ops[0].number : (uint64_t)(ops[0].atom - DW_OP_breg0);
		int64_t o = (int64_t)(ops[0].atom == DW_OP_bregx ? ops[0].number2 : ops[0].number);

		if (reg == 7 || reg == 6) {
			*kind = reg == 7 ? DN_UW_SP : DN_UW_FP;
			*cfa = o;
		}
		return;
	}
	if (plt_expr(ops, n, aux)) {
		*kind = DN_UW_PLT;
		*cfa = 8;
	}
}

/* The rows of one FDE's range [lo, hi). */
static int fde_rows(struct builder *b, Dwarf_CFI *cfi, uint64_t lo, uint64_t hi)
{
	uint64_t a = lo, t0 = now_ns();

	while (a < hi) {
		if (now_ns() - t0 > DN_UW_FDE_NS) {
			b->slow++;
			return add_row(b, a, DN_UW_STOP, 0, 0, 0);
		}
		Dwarf_Frame *f = NULL;
		Dwarf_Addr s = 0, e = 0;
		bool signal = false;
		int kind, rbp, aux;
		int64_t cfa;

		if (dwarf_cfi_addrframe(cfi, a, &f) != 0 || dwarf_frame_info(f, &s, &e, &signal) < 0 || e <= a) {
			free(f);
			/* no rule from here on in this FDE */
			return add_row(b, a, DN_UW_STOP, 0, 0, 0);
		}
		frame_row(f, &kind, &cfa, &rbp, &aux);
		free(f);
		if (add_row(b, a, kind, cfa, rbp, aux) < 0)
			return -1;
		a = e;
	}
	return 0;
}

static int row_cmp(const void *x, const void *y)
{
	const struct dn_uw_row *a = x, *b = y;

	return a->pc < b->pc ? -1 : a->pc > b->pc;
}

static int same_rule(const struct dn_uw_row *a, const struct dn_uw_row *b)
{
	return a->kind == b->kind && a->cfa == b->cfa && a->rbp == b->rbp && a->aux == b->aux;
}

/* Walk the CFI section data (eh: .eh_frame at address sh_addr, else
 * .debug_frame) for its FDEs, adding each one's rows and a stop row at
 * its end. */
/* The rows of the FDE whose body (after its CIE pointer) is [p, end), at
 * section address at, of CIE c: none when its encoding is not understood;
 * a stop row alone when its rules name a register past DN_UW_MAX_REG. */
static int fde_entry(struct builder *b, Dwarf_CFI *cfi, const struct cie_enc *c, const uint8_t *p, const uint8_t *end,
                     uint64_t at)
{
	uint8_t enc = c->enc;
	uint64_t loc, range, alen = 0;
	const uint8_t *q = p + enc_size(enc) + enc_size(enc & 0x0f);

	if (!c->ok || read_ptr(p, end, enc, at, 1, &loc) != 0 ||
	    read_ptr(p + enc_size(enc), end, enc & 0x0f, 0, 0, &range) != 0 || range == 0 || range >= (1ull << 32) ||
	    loc == 0)
		return 0;
	/* its rules: after the range (and its augmentation data) */
	if (!c->small || q > end || (c->z && get_uleb(&q, end, &alen) != 0) || alen > (uint64_t)(end - q) ||
	    !cfa_regs_small(q + alen, end, enc_size(enc)))
		return add_row(b, loc, DN_UW_STOP, 0, 0, 0); /* its frames end the walk */
	if (fde_rows(b, cfi, loc, loc + range) < 0)
		return -1;
	return add_row(b, loc + range, DN_UW_STOP, 0, 0, 0);
}

static int walk_section(struct builder *b, Dwarf_CFI *cfi, Elf *elf, Elf_Data *data, uint64_t sh_addr, int eh,
                        char *why, size_t wn)
{
	const unsigned char *ident = (const unsigned char *)elf_getident(elf, NULL);
	struct cie_enc *cies = NULL;
	size_t ncies = 0;
	Dwarf_Off off = 0, next;
	int rc = 0;

	if (!ident) {
		snprintf(why, wn, "not an ELF file");
		return -1;
	}
	for (;;) {
		Dwarf_CFI_Entry ent;
		int r = dwarf_next_cfi(ident, data, eh, off, &next, &ent);

		if (r > 0)
			break;
		if (r < 0) {
			snprintf(why, wn, "its %s cannot be read at offset %llu: %s", eh ? ".eh_frame" : ".debug_frame",
			         (unsigned long long)off, dwarf_errmsg(-1));
			rc = -1;
			break;
		}
		if (next <= off)
			break;
		if (ent.CIE_id == LIBDW_CIE_ID) {
			if (ncies < DN_UW_MAX_CIES) {
				if (ncies % 64 == 0) {
					void *p = realloc(cies, (ncies + 64) * sizeof(*cies));
					if (!p) {
						rc = -1;
						break;
					}
					cies = p;
				}
				cies[ncies++] = cie_encoding(&ent.cie, off, eh);
			}
		} else {
			const struct cie_enc *c = NULL;
			const uint8_t *p = ent.fde.start, *end = ent.fde.end;
			size_t i;

			for (i = 0; i < ncies; i++)
				if (cies[i].off == ent.fde.CIE_pointer) {
					c = &cies[i];
					break;
				}
			if (c &&
			    fde_entry(b, cfi, c, p, end, sh_addr + (uint64_t)(p - (const uint8_t *)data->d_buf)) < 0) {
				rc = -1;
				break;
			}
			if (b->slow >= DN_UW_SLOW_FDES) {
				snprintf(why, wn, "its call frame information is too costly to read");
				rc = -1;
				break;
			}
		}
		off = next;
	}
	free(cies);
	if (b->too_many)
		snprintf(why, wn, "its call frame information is absurdly large (over %u rows)", DN_UW_MAX_ROWS);
	return b->too_many ? -1 : rc;
}

/* Sort the rows, and drop those that repeat the rule before them. A stop
 * row at an FDE's end that another FDE begins at is dropped by the sort
 * order: rows at the same pc keep the last non-stop one. */
static void finish(struct builder *b)
{
	size_t i, o = 0;

	if (b->n == 0)
		return;
	qsort(b->rows, b->n, sizeof(*b->rows), row_cmp);
	for (i = 0; i < b->n; i++) {
		struct dn_uw_row *r = &b->rows[i];

		if (o > 0 && b->rows[o - 1].pc == r->pc) {
			/* a real rule beats a stop at the same address */
			if (r->kind != DN_UW_STOP)
				b->rows[o - 1] = *r;
			if (o > 1 && same_rule(&b->rows[o - 2], &b->rows[o - 1]))
				o--;
			continue;
		}
		if (o > 0 && same_rule(&b->rows[o - 1], r))
			continue;
		b->rows[o++] = *r;
	}
	b->n = o;
}

static Elf_Scn *section_named(Elf *elf, const char *name, GElf_Shdr *sh)
{
	size_t shstrndx;
	Elf_Scn *s = NULL;

	if (elf_getshdrstrndx(elf, &shstrndx) != 0)
		return NULL;
	while ((s = elf_nextscn(elf, s)) != NULL) {
		const char *n;

		if (!gelf_getshdr(s, sh))
			continue;
		n = elf_strptr(elf, shstrndx, sh->sh_name);
		if (n && strcmp(n, name) == 0 && sh->sh_type != SHT_NOBITS)
			return s;
	}
	return NULL;
}

int dn_uw_build_elf(Elf *elf, struct dn_uw_row **rows, size_t *n, char *why, size_t wn)
{
	struct builder b = { 0 };
	GElf_Ehdr eh;
	GElf_Shdr sh;
	Elf_Scn *scn;
	Elf_Data *data;
	Dwarf *dw = NULL;
	Dwarf_CFI *cfi = NULL;
	int rc = -1, is_eh = 1;

	*rows = NULL;
	*n = 0;
	why[0] = '\0';
	if (!gelf_getehdr(elf, &eh) || eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64) {
		snprintf(why, wn, "not an x86-64 ELF file");
		return -1;
	}
	scn = section_named(elf, ".eh_frame", &sh);
	if (scn) {
		cfi = dwarf_getcfi_elf(elf);
	} else {
		scn = section_named(elf, ".debug_frame", &sh);
		is_eh = 0;
		if (scn) {
			dw = dwarf_begin_elf(elf, DWARF_C_READ, NULL);
			cfi = dw ? dwarf_getcfi(dw) : NULL;
		}
	}
	if (!scn) {
		GElf_Shdr go;

		snprintf(why, wn, "%s",
		         section_named(elf, ".gopclntab", &go)
		                 ? "a Go binary: it has only .gopclntab, no call frame information"
		                 : "it has no call frame information (.eh_frame or .debug_frame)");
		goto out;
	}
	if (sh.sh_size > (256u << 20)) {
		snprintf(why, wn, "its call frame information is absurdly large (%llu bytes)",
		         (unsigned long long)sh.sh_size);
		goto out;
	}
	data = elf_getdata(scn, NULL);
	if (!cfi || !data || !data->d_buf) {
		snprintf(why, wn, "its call frame information cannot be read: %s", dwarf_errmsg(-1));
		goto out;
	}
	if (walk_section(&b, cfi, elf, data, is_eh ? sh.sh_addr : 0, is_eh, why, wn) < 0)
		goto out;
	finish(&b);
	/* (no FDE at all is a table with no rows: a stub library) */
	*rows = b.rows;
	*n = b.n;
	b.rows = NULL;
	rc = 0;
out:
	free(b.rows);
	if (dw)
		dwarf_end(dw);
	/* a Dwarf_CFI from dwarf_getcfi_elf is the caller's to free */
	else if (cfi)
		dwarf_cfi_end(cfi);
	return rc;
}

/* The build-id of elf as hex into out (2 * 20 + 1 bytes at least), or "". */
static void build_id_hex(Elf *elf, char *out, size_t on)
{
	const void *id = NULL;
	ssize_t len = dwelf_elf_gnu_build_id(elf, &id);
	ssize_t i;

	out[0] = '\0';
	for (i = 0; len > 0 && i < len && (size_t)(2 * i + 2) < on; i++)
		snprintf(out + 2 * i, 3, "%02x", ((const unsigned char *)id)[i]);
}

/* The ELF file at path, open (its descriptor into *fd), or NULL with
 * nil, why, errno pushed. */
static Elf *open_elf(lua_State *L, const char *path, int *fd)
{
	Elf *elf;

	elf_version(EV_CURRENT);
	*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd < 0) {
		dn_vm_fail(L, errno, "%s: %s", path, strerror(errno));
		return NULL;
	}
	elf = elf_begin(*fd, ELF_C_READ_MMAP, NULL);
	if (!elf) {
		close(*fd);
		dn_vm_fail(L, EINVAL, "%s: not an ELF file", path);
	}
	return elf;
}

/* core.uw_table(path) -> rows (packed struct dn_uw_row, sorted), build-id
 * (hex, "" when none), executable load segments { {offset, vaddr, memsz} }
 * | nil, why */
static int l_uw_table(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char why[DN_ERRBUF], bid[128];
	struct dn_uw_row *rows;
	GElf_Phdr segs[16];
	size_t n, i, nph = 0, nsegs = 0;
	int fd, rc;
	Elf *elf = open_elf(L, path, &fd);

	if (!elf)
		return 3;
	build_id_hex(elf, bid, sizeof(bid));
	/* the executable load segments: where the file's addresses are mapped */
	if (elf_getphdrnum(elf, &nph) == 0)
		for (i = 0; i < nph && nsegs < 16; i++) {
			GElf_Phdr ph;

			if (gelf_getphdr(elf, (int)i, &ph) && ph.p_type == PT_LOAD && (ph.p_flags & PF_X))
				segs[nsegs++] = ph;
		}
	rc = dn_uw_build_elf(elf, &rows, &n, why, sizeof(why));
	elf_end(elf);
	close(fd);
	if (rc < 0)
		return dn_vm_fail(L, EINVAL, "%s", why);
	lua_pushlstring(L, (const char *)rows, n * sizeof(*rows));
	free(rows);
	lua_pushstring(L, bid);
	lua_newtable(L);
	for (i = 0; i < nsegs; i++) {
		lua_createtable(L, 3, 0);
		lua_pushnumber(L, (lua_Number)segs[i].p_offset);
		lua_rawseti(L, -2, 1);
		lua_pushnumber(L, (lua_Number)segs[i].p_vaddr);
		lua_rawseti(L, -2, 2);
		lua_pushnumber(L, (lua_Number)segs[i].p_memsz);
		lua_rawseti(L, -2, 3);
		lua_rawseti(L, -2, (int)i + 1);
	}
	return 3;
}

/* core.uw_build_id(path) -> hex build-id | "" | nil, why */
static int l_uw_build_id(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char bid[128];
	int fd;
	Elf *elf = open_elf(L, path, &fd);

	if (!elf)
		return 3;
	build_id_hex(elf, bid, sizeof(bid));
	elf_end(elf);
	close(fd);
	lua_pushstring(L, bid);
	return 1;
}

/* core.elf_symbols(path, {names}) -> { name = address } (of the names
 * found in .dynsym or .symtab, any type), the file's type ("exec" or
 * "dyn") | nil, why */
static int l_elf_symbols(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	Elf_Scn *scn = NULL;
	GElf_Ehdr eh;
	int fd;
	Elf *elf;

	luaL_checktype(L, 2, LUA_TTABLE);
	elf = open_elf(L, path, &fd);
	if (!elf)
		return 3;
	lua_newtable(L);
	while ((scn = elf_nextscn(elf, scn)) != NULL) {
		GElf_Shdr sh;
		Elf_Data *data;
		size_t i, n;

		if (!gelf_getshdr(scn, &sh) || (sh.sh_type != SHT_DYNSYM && sh.sh_type != SHT_SYMTAB) ||
		    !sh.sh_entsize || !(data = elf_getdata(scn, NULL)))
			continue;
		n = sh.sh_size / sh.sh_entsize;
		for (i = 0; i < n; i++) {
			GElf_Sym sym;
			const char *name;

			if (!gelf_getsym(data, (int)i, &sym) || sym.st_shndx == SHN_UNDEF ||
			    !(name = elf_strptr(elf, sh.sh_link, sym.st_name)) || !*name)
				continue;
			lua_getfield(L, 2, name);
			if (!lua_isnil(L, -1)) {
				lua_pushnumber(L, (lua_Number)sym.st_value);
				lua_setfield(L, -3, name);
			}
			lua_pop(L, 1);
		}
	}
	lua_pushstring(L, gelf_getehdr(elf, &eh) && eh.e_type == ET_EXEC ? "exec" : "dyn");
	elf_end(elf);
	close(fd);
	return 2;
}

/* --- the table in the kernel: pages ------------------------------------ */

/* The index of the last row at or before pc, or -1. */
static long row_at(const struct dn_uw_row *r, size_t n, uint64_t pc)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (r[mid].pc <= pc)
			lo = mid + 1;
		else
			hi = mid;
	}
	return (long)lo - 1;
}

/* Fill page value v with the rows of [base, base + unit) (the one in
 * effect at base first); rows past what a value holds stop a walk. */
static void fill_page(struct dn_uw_page *v, const struct dn_uw_row *r, size_t n, uint64_t base, uint64_t unit)
{
	long i = row_at(r, n, base);
	uint32_t k = 0;

	memset(v, 0, sizeof(*v));
	if (i < 0)
		i = 0;
	for (; (size_t)i < n && k < DN_UW_PAGE_ROWS; i++) {
		const struct dn_uw_row *x = &r[i];

		if (x->pc >= base + unit)
			break;
		v->r[k].off = x->pc > base ? (uint16_t)(x->pc - base) : 0;
		v->r[k].kind = x->kind;
		v->r[k].rbp = x->rbp;
		v->r[k].cfa = x->kind == DN_UW_PLT ? x->aux : x->cfa;
		k++;
	}
	if (k == DN_UW_PAGE_ROWS && (size_t)i < n && r[i].pc < base + unit) {
		v->r[k - 1].kind = DN_UW_STOP;
		v->r[k - 1].cfa = 0;
		v->r[k - 1].rbp = 0;
	}
	v->n = k;
}

/* Rows of [base, base + unit). */
static size_t rows_in(const struct dn_uw_row *r, size_t n, uint64_t base, uint64_t unit)
{
	long a = row_at(r, n, base), b = row_at(r, n, base + unit - 1);

	if (a < 0)
		a = 0;
	return b < a ? 0 : (size_t)(b - a + 1);
}

/* pages written to the map in batches (one syscall for many) */
#define DN_UW_BATCH 1024

struct page_out {
	int fd;
	uint32_t file;
	struct dn_uw_page_key *keys; /* every key written */
	size_t nkeys, cap;
	struct dn_uw_page *vals; /* the batch's values (its keys: the last of keys) */
	size_t nbatch;
	int err;
};

/* Write the batch of pages waiting. */
static void flush_pages(struct page_out *o)
{
	__u32 count = (__u32)o->nbatch;

	if (o->err || o->nbatch == 0 || o->fd < 0) {
		o->nbatch = 0;
		return;
	}
	if (bpf_map_update_batch(o->fd, o->keys + o->nkeys - o->nbatch, o->vals, &count, NULL) != 0) {
		/* (kernels without batches for hash maps: one at a time) */
		size_t i;

		for (i = 0; i < o->nbatch && !o->err; i++)
			if (bpf_update_elem(o->fd, &o->keys[o->nkeys - o->nbatch + i], &o->vals[i], 0) != 0)
				o->err = errno;
	}
	o->nbatch = 0;
}

static void put_page(struct page_out *o, uint32_t page, const struct dn_uw_page *v)
{
	struct dn_uw_page_key k = { o->file, page };

	if (o->err)
		return;
	if (o->nkeys == o->cap) {
		size_t cap = o->cap ? 2 * o->cap : 256;
		void *p = realloc(o->keys, cap * sizeof(*o->keys));

		if (!p) {
			o->err = ENOMEM;
			return;
		}
		o->keys = p;
		o->cap = cap;
	}
	o->keys[o->nkeys++] = k;
	if (o->fd < 0)
		return;
	if (!o->vals) {
		o->vals = malloc(DN_UW_BATCH * sizeof(*o->vals));
		if (!o->vals) {
			o->err = ENOMEM;
			return;
		}
	}
	o->vals[o->nbatch++] = *v;
	if (o->nbatch == DN_UW_BATCH)
		flush_pages(o);
}

/* Write the pages of rows r[0..n) of file o->file into the map. */
static void dn_uw_pages(const struct dn_uw_row *r, size_t n, struct page_out *o)
{
	uint64_t last = UINT64_MAX;
	struct dn_uw_page v;
	size_t i;

	for (i = 0; i < n && !o->err; i++) {
		uint64_t stop = i + 1 < n ? r[i + 1].pc : (uint64_t)r[i].pc + 1, p;

		if (r[i].kind == DN_UW_STOP && i + 1 < n)
			continue;
		for (p = r[i].pc / DN_UW_PAGE; p <= (stop - 1) / DN_UW_PAGE && !o->err; p++) {
			uint64_t base = p * DN_UW_PAGE, q;

			if (last != UINT64_MAX && p <= last)
				continue;
			last = p;
			if (rows_in(r, n, base, DN_UW_PAGE) <= DN_UW_PAGE_ROWS) {
				fill_page(&v, r, n, base, DN_UW_PAGE);
				put_page(o, (uint32_t)p, &v);
				continue;
			}
			memset(&v, 0, sizeof(v));
			v.n = DN_UW_SPLIT;
			put_page(o, (uint32_t)p, &v);
			for (q = 0; q < DN_UW_PAGE / DN_UW_PART; q++) {
				uint64_t qb = base + q * DN_UW_PART;

				fill_page(&v, r, n, qb, DN_UW_PART);
				put_page(o, DN_UW_QUARTER | (uint32_t)(qb / DN_UW_PART), &v);
			}
		}
	}
}

/* core.uw_load(map_fd, file, rows) -> keys written (packed struct
 * dn_uw_page_key) | nil, why, errno. map_fd < 0: the keys only. */
static int l_uw_load(lua_State *L)
{
	struct page_out o = { (int)luaL_checkinteger(L, 1), (uint32_t)luaL_checkinteger(L, 2), NULL, 0, 0, NULL, 0, 0 };
	size_t len;
	const char *rows = luaL_checklstring(L, 3, &len);

	dn_uw_pages((const struct dn_uw_row *)rows, len / sizeof(struct dn_uw_row), &o);
	flush_pages(&o);
	free(o.vals);
	if (o.err) {
		size_t i;

		/* none of it: a table in part would cut walks where rows are missing */
		for (i = 0; o.fd >= 0 && i < o.nkeys; i++)
			bpf_delete_elem(o.fd, &o.keys[i]);
		free(o.keys);
		return dn_vm_fail(L, o.err, "%s", strerror(o.err));
	}
	lua_pushlstring(L, (const char *)o.keys, o.nkeys * sizeof(*o.keys));
	free(o.keys);
	return 1;
}

/* core.uw_file_key(path) -> "MAJ:MIN:INO" as /proc/PID/maps writes the
 * file's device and inode | nil, why */
static int l_uw_file_key(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct stat st;
	char key[64];

	if (stat(path, &st) < 0)
		return dn_vm_fail(L, errno, "%s: %s", path, strerror(errno));
	snprintf(key, sizeof(key), "%02x:%02x:%llu", major(st.st_dev), minor(st.st_dev), (unsigned long long)st.st_ino);
	lua_pushstring(L, key);
	return 1;
}

char *dn_demangle(const char *name);

/* core.demangle(name) -> the C++ name demangled | name as it is */
static int l_demangle(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	char *d = dn_demangle(name);

	if (!d) {
		lua_settop(L, 1);
		return 1;
	}
	lua_pushstring(L, d);
	free(d);
	return 1;
}

void dn_unwind_open(lua_State *L)
{
	static const luaL_Reg fns[] = {
		{ "demangle", l_demangle },
		{ "uw_file_key", l_uw_file_key },
		{ "uw_load", l_uw_load },
		{ "uw_table", l_uw_table },
		{ "uw_build_id", l_uw_build_id },
		{ "elf_symbols", l_elf_symbols },
		{ NULL, NULL },
	};

	dn_vm_setfuncs(L, fns);
}
