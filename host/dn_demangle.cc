/*
 * dn_demangle.cc - C++ symbol names as people read them, through the C++
 * runtime's own demangler (abi::__cxa_demangle), for the C host.
 */
#include <cstdlib>
#include <cxxabi.h>

extern "C" char *dn_demangle(const char *name);

/* The demangled form of name (malloc'd; the caller frees), or NULL when
 * it is not a mangled C++ name. */
extern "C" char *dn_demangle(const char *name)
{
	int status = 0;

	if (!name || name[0] != '_' || name[1] != 'Z')
		return nullptr;
	char *out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
	if (status != 0) {
		std::free(out);
		return nullptr;
	}
	return out;
}
