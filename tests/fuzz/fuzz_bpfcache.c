/* fuzz_bpfcache: compile cache entries (dn_bpfcache.c) decoded from any
 * bytes; a decoded image must be whole. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dn_bpf_image img;
	char why[DN_ERRBUF], *label = NULL;
	uint32_t i, j;
	int ok;

	if (dn_bpfcache_parse(data, size, NULL, &img, &label, why, sizeof(why)) != 0) {
		if (!why[0])
			abort(); /* a refusal says why */
		return 0;
	}
	if (!label || !img.license || (img.ntabs && !img.tabs) || (img.nfns && !img.fns))
		abort();
	for (i = 0; i < img.ntabs; i++) {
		if (!img.tabs[i].name || !img.tabs[i].key_desc || !img.tabs[i].leaf_desc || img.tabs[i].fd != -1)
			abort();
		for (j = 0; j < img.tabs[i].nfields; j++)
			if (!img.tabs[i].fields[j])
				abort();
	}
	for (i = 0; i < img.nfns; i++)
		if (!img.fns[i].name || !img.fns[i].code)
			abort();
	/* two other keys: the entry's own key may be one of them, never both */
	dn_bpf_image_free(&img);
	ok = dn_bpfcache_parse(data, size, "no such key", &img, NULL, why, sizeof(why)) == 0;
	dn_bpf_image_free(&img);
	if (ok && dn_bpfcache_parse(data, size, "no such key!", &img, NULL, why, sizeof(why)) == 0)
		abort();
	dn_bpf_image_free(&img);
	free(label);
	return 0;
}
