/* What tinyguest's pieces tell each other.  One header: the guest is small. */
#ifndef TINYGUEST_H
#define TINYGUEST_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "lguest.h"

#define PA(x) ((uint32_t)(x) - PAGE_OFFSET)
#define VA(pa) ((void *)((uint32_t)(pa) + PAGE_OFFSET))
#define barrier() __asm__ __volatile__("" ::: "memory")
/* A full fence that every i386 has: the host (or the launcher's helper
 * threads) must see our ring writes in order, and we theirs. */
#define mb() __asm__ __volatile__("lock; addl $0,0(%%esp)" ::: "memory")

/* lib.c */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
uint32_t crc32_update(uint32_t crc, const void *buf, size_t len);

/* printf.c */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...);

/* hcall.c: hypercalls, the async ring and our virtual interrupt flag. */
extern struct lguest_data lguest_data;
uint32_t hcall(uint32_t call, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4);
void async_hcall(uint32_t call, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4);
void lazy_mode_begin(void);
void lazy_mode_end(void);
void lazy_hcall(uint32_t call, uint32_t a1, uint32_t a2, uint32_t a3);
uint32_t irq_save(void);
void irq_restore(uint32_t flags);
void irq_enable(void);
void halt(void);
void power_off(const char *msg) __attribute__((noreturn));
void restart(const char *msg) __attribute__((noreturn));

/* mm.c: pages, our page tables, and telling the host about them. */
extern uint32_t boot_pgdir[1024];
extern uint32_t *cur_pgdir;
void mm_init(uint32_t mem_bytes);
void *alloc_page(void);
uint32_t *pte_ptr(uint32_t *pgdir, uint32_t va, uint32_t pde_flags);
void set_pte(uint32_t *pgdir, uint32_t va, uint32_t pte);
void set_pgd(uint32_t *pgdir, unsigned idx, uint32_t pde);
void map_io(uint32_t gpa, uint32_t len);
void switch_pgdir(uint32_t *pgdir);
uint32_t scratch_va(void);

/* traps.c */
struct trapframe {
	uint32_t edi, esi, ebp, esp_unused, ebx, edx, ecx, eax;
	uint32_t es, ds, vector, err;
	uint32_t eip, cs, eflags;
	uint32_t user_esp, user_ss;      /* only when cs is a ring-3 selector */
};
typedef int (*trap_fn)(struct trapframe *tf);
typedef void (*irq_fn)(unsigned irq);
extern volatile uint32_t irq_count[LGUEST_IRQS];
extern volatile uint32_t irq_foreign;
extern uint32_t user_exit_code;
void traps_init(void);
void set_trap_handler(unsigned vec, trap_fn fn);
void set_irq_handler(unsigned irq, irq_fn fn);
void set_kernel_stack(void);
int trap_fatal(struct trapframe *tf) __attribute__((noreturn));
int user_enter(uint32_t eip, uint32_t esp);

/* console.c */
void early_puts(const char *s);
void console_init(void);
int console_is_virtio(void);
void kputs(const char *s);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
struct virtqueue;
struct virtqueue *console_rx_queue(void);
void console_write(const char *buf, size_t len);

/* virtio.c: the lguest device page and legacy vrings. */
struct vring_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vring_avail { uint16_t flags, idx, ring[]; };
struct vring_used_elem { uint32_t id, len; };
struct vring_used { uint16_t flags, idx; struct vring_used_elem ring[]; };
struct virtqueue {
	unsigned num, irq, pfn;
	struct vring_desc *desc;
	struct vring_avail *avail;
	volatile struct vring_used *used;
	uint16_t free_head, num_free, last_used;
	uint32_t kicks, kicks_suppressed;
};
struct vbuf { void *addr; uint32_t len; int device_writes; };
struct virtio_dev {
	uint8_t *rec;
	uint8_t type, num_vq, feature_len, config_len;
	struct virtqueue vq[4];
};
extern uint32_t virtio_irq_lines;
struct virtio_dev *virtio_find(uint8_t type);
uint32_t virtio_offered(struct virtio_dev *d);
uint32_t virtio_start(struct virtio_dev *d, uint32_t wanted);
uint8_t *virtio_config(struct virtio_dev *d);
int vq_add(struct virtqueue *vq, const struct vbuf *bufs, unsigned n);
void vq_kick(struct virtqueue *vq);
int vq_get_used(struct virtqueue *vq, uint32_t *len);
int vq_wait_used(struct virtqueue *vq, uint32_t *len);

/* blk.c */
int blk_init(void);
uint64_t blk_capacity(void);
int blk_has_flush(void);
int blk_io(uint32_t type, uint32_t sector, void *buf, uint32_t nsec);
struct virtqueue *blk_queue(void);

/* cmdline.c */
void cmdline_init(void);
const char *cmdline(void);
const char *arg_str(const char *key, const char *dflt);
uint32_t arg_uint(const char *key, uint32_t dflt);

/* The scenarios (scen_*.c).  Each prints its result line. */
void scen_hello(void);
void scen_echo(void);
void scen_blk(void);
void scen_reboot(void);
void scen_usermode(void);
void scen_timer(void);
void scen_spin(void);
void scen_halt(void);
void scen_rearm(void);
void scen_crash(void);
void scen_storm(void);
void scen_badpte(void);
void scen_blkrace(void);

extern uint32_t mem_bytes;
#endif
