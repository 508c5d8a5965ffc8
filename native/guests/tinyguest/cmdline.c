/*
 * The command line the launcher put at gpa 0x1000 (the zero page points at
 * it): "test=NAME key=value ...".  We copy it before we unmap low memory.
 */
#include "tinyguest.h"

#define CMDLINE_MAX 512

static char line[CMDLINE_MAX];

void cmdline_init(void)
{
	const uint8_t *zp = VA(0);
	uint32_t ptr;
	memcpy(&ptr, zp + BP_CMD_LINE_PTR, 4);
	const char *src = VA(ptr);
	size_t n = 0;
	if (ptr && ptr < (4u << 20) - CMDLINE_MAX)
		while (n < CMDLINE_MAX - 1 && src[n])
			n++, line[n - 1] = src[n - 1];
	line[n] = 0;
}

const char *cmdline(void)
{
	return line;
}

/* The value of `key=` as a fresh string, or dflt.  Later words win. */
const char *arg_str(const char *key, const char *dflt)
{
	static char val[8][64];
	static unsigned slot;
	const char *found = 0;
	size_t klen = strlen(key);
	for (const char *p = line; *p;) {
		while (*p == ' ')
			p++;
		if (!memcmp(p, key, klen) && p[klen] == '=')
			found = p + klen + 1;
		while (*p && *p != ' ')
			p++;
	}
	if (!found)
		return dflt;
	char *v = val[slot++ % 8];
	size_t n = 0;
	while (found[n] && found[n] != ' ' && n < sizeof(val[0]) - 1)
		v[n] = found[n], n++;
	v[n] = 0;
	return v;
}

/* Decimal, or hex with 0x. */
uint32_t arg_uint(const char *key, uint32_t dflt)
{
	const char *s = arg_str(key, 0);
	if (!s || !*s)
		return dflt;
	uint32_t v = 0, base = 10;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		base = 16, s += 2;
	for (; *s; s++) {
		uint32_t d;
		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && (*s | 0x20) >= 'a' && (*s | 0x20) <= 'f')
			d = (*s | 0x20) - 'a' + 10;
		else
			return dflt;
		v = v * base + d;
	}
	return v;
}
