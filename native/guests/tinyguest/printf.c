/* A small vsnprintf: %s %c %d %u %x %X %p %%, with optional 0 and width.
 * Enough for result lines; no floating point (we never touch the FPU). */
#include "tinyguest.h"

struct out { char *buf; size_t size, n; };

static void put(struct out *o, char c)
{
	if (o->n + 1 < o->size)
		o->buf[o->n] = c;
	o->n++;
}

static void put_num(struct out *o, uint32_t v, unsigned base, int upper,
		    int neg, int width, char pad)
{
	char tmp[12];
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	int i = 0;
	do {
		tmp[i++] = digits[v % base];
		v /= base;
	} while (v);
	if (neg)
		tmp[i++] = '-';
	for (int w = i; w < width; w++)
		put(o, pad);
	while (i)
		put(o, tmp[--i]);
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { buf, size, 0 };
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(&o, *fmt);
			continue;
		}
		char pad = ' ';
		int width = 0;
		fmt++;
		if (*fmt == '0')
			pad = '0', fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		switch (*fmt) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			int len = (int)strlen(s);
			for (int w = len; w < width; w++)
				put(&o, ' ');
			while (*s)
				put(&o, *s++);
			break;
		}
		case 'c':
			put(&o, (char)va_arg(ap, int));
			break;
		case 'd': {
			int v = va_arg(ap, int);
			put_num(&o, v < 0 ? -(uint32_t)v : (uint32_t)v, 10, 0, v < 0, width, pad);
			break;
		}
		case 'u':
			put_num(&o, va_arg(ap, uint32_t), 10, 0, 0, width, pad);
			break;
		case 'x':
		case 'X':
			put_num(&o, va_arg(ap, uint32_t), 16, *fmt == 'X', 0, width, pad);
			break;
		case 'p':
			put(&o, '0');
			put(&o, 'x');
			put_num(&o, (uint32_t)va_arg(ap, void *), 16, 0, 0, 8, '0');
			break;
		case '%':
			put(&o, '%');
			break;
		default:
			put(&o, '%');
			put(&o, *fmt);
			if (!*fmt)
				fmt--;
		}
	}
	if (size)
		buf[o.n < size ? o.n : size - 1] = 0;
	return (int)o.n;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}
