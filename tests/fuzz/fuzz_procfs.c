/* fuzz_procfs: the /proc parsers (stat, io, status, net/dev) on any text.
 * Input: a stat line, then the rest as io, status and net/dev text
 * (split at the first NUL byte, if any). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1);
	struct dn_psample s;
	unsigned long long rx, tx;
	size_t cut;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	cut = strlen(buf);
	memset(&s, 0, sizeof(s));
	if (dn_procfs_parse_stat(buf, &s) == 0 && memchr(s.comm, '\0', sizeof(s.comm)) == NULL)
		abort(); /* the comm must be terminated */
	{
		const char *rest = cut < size ? buf + cut + 1 : buf;

		dn_procfs_parse_io(rest, &s);
		dn_procfs_parse_status(rest, &s);
	}
	dn_procfs_parse_netdev(buf, &rx, &tx);
	free(buf);
	return 0;
}
