/* fuzz_uwtable: unwind tables (dn_unwind.c) from any bytes read as an ELF
 * file; a table built must be sorted, its rows of known kinds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libelf.h>

#include "dn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char why[DN_ERRBUF];
	struct dn_uw_row *rows = NULL;
	size_t n = 0, i;
	char *copy = malloc(size ? size : 1);
	Elf *elf;

	if (!copy)
		return 0;
	memcpy(copy, data, size);
	elf_version(EV_CURRENT);
	elf = elf_memory(copy, size);
	if (elf) {
		if (dn_uw_build_elf(elf, &rows, &n, why, sizeof(why)) == 0) {
			if (n > 0 && !rows)
				abort();
			for (i = 0; i < n; i++)
				if (rows[i].kind > DN_UW_END || (i > 0 && rows[i].pc <= rows[i - 1].pc))
					abort();
			free(rows);
		} else if (!why[0]) {
			abort(); /* a refusal says why */
		}
		elf_end(elf);
	}
	free(copy);
	return 0;
}
