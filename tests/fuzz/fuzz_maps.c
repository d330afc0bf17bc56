/* fuzz_maps: /proc/PID/maps text into a symbol resolver, and lookups of
 * addresses taken from the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	struct dn_sym_maps *m;
	struct dn_sym_result r;
	size_t i;

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	m = dn_sym_maps_parse(text);
	if (m) {
		/* addresses from the input's bytes, and the ends of the ranges */
		for (i = 0; i + 8 <= size && i < 256; i += 8) {
			uint64_t a;

			memcpy(&a, data + i, sizeof(a));
			dn_sym_maps_resolve(m, a, &r);
		}
		dn_sym_maps_resolve(m, 0, &r);
		dn_sym_maps_resolve(m, UINT64_MAX, &r);
		dn_sym_maps_free(m);
	}
	free(text);
	return 0;
}
