/*
 * The 3.x lguest Guest ABI, as tinyguest needs it.  Names match
 * cuse_lguest/abi.py so the two can be checked against each other and
 * against the spec (docs/lguest-abi.md).  Everything is i386, non-PAE.
 */
#ifndef TINYGUEST_LGUEST_H
#define TINYGUEST_LGUEST_H

#define PAGE_SIZE 4096
#define PAGE_SHIFT 12

/* We link like Linux: the kernel lives at PAGE_OFFSET + physical. */
#define PAGE_OFFSET 0xC0000000

/* Hypercalls: int $0x1f, EAX = number, EBX/ECX/EDX/ESI = arguments. */
#define LGUEST_TRAP_ENTRY 0x1F
#define LHCALL_FLUSH_ASYNC 0
#define LHCALL_LGUEST_INIT 1
#define LHCALL_SHUTDOWN 2
#define LHCALL_NEW_PGTABLE 4
#define LHCALL_FLUSH_TLB 5
#define LHCALL_LOAD_IDT_ENTRY 6
#define LHCALL_SET_STACK 7
#define LHCALL_TS 8
#define LHCALL_SET_CLOCKEVENT 9
#define LHCALL_HALT 10
#define LHCALL_SET_PTE 14
#define LHCALL_SET_PGD 15
#define LHCALL_LOAD_TLS 16
#define LHCALL_NOTIFY 17
#define LHCALL_LOAD_GDT_ENTRY 18
#define LHCALL_SEND_INTERRUPTS 19

#define LGUEST_SHUTDOWN_POWEROFF 1
#define LGUEST_SHUTDOWN_RESTART 2

/* Interrupts: IRQ n arrives on vector FIRST_EXTERNAL_VECTOR + n. */
#define LGUEST_IRQS 32
#define FIRST_EXTERNAL_VECTOR 32
#define SYSCALL_VECTOR 0x80
#define X86_EFLAGS_IF 0x200
#define GATE_INTERRUPT 0xE
#define GATE_TRAP 0xF

/* GDT slots and the selectors that go with them (spec §4.5). */
#define GDT_ENTRY_KERNEL_CS 12
#define GDT_ENTRY_KERNEL_DS 13
#define GDT_ENTRY_USER_CS 14
#define GDT_ENTRY_USER_DS 15
#define GUEST_PL 1
#define KERNEL_CS ((GDT_ENTRY_KERNEL_CS << 3) | GUEST_PL)   /* 0x61 */
#define KERNEL_DS ((GDT_ENTRY_KERNEL_DS << 3) | GUEST_PL)   /* 0x69 */
#define USER_CS ((GDT_ENTRY_USER_CS << 3) | 3)              /* 0x73 */
#define USER_DS ((GDT_ENTRY_USER_DS << 3) | 3)              /* 0x7B */

/* Non-PAE paging bits. */
#define PTE_PRESENT 0x001
#define PTE_RW 0x002
#define PTE_USER 0x004
#define PTE_ACCESSED 0x020
#define PTE_DIRTY 0x040

/* The async hypercall ring. */
#define LHCALL_RING_SIZE 64
#define HCALL_STATUS_FREE 0xFF

/* Offsets the assembly needs; the C struct below is checked against them. */
#define LGUEST_DATA_IRQ_ENABLED 0
#define LGUEST_DATA_SIZE 1392

#ifndef __ASSEMBLER__
#include <stdint.h>

struct hcall_args {
	uint32_t arg0, arg1, arg2, arg3, arg4;
};

/*
 * The page we share with the host.  The host writes cr2, time, irq_pending,
 * reserve_mem and tsc_khz; we write the rest.  irq_enabled is our virtual
 * interrupt flag: the host only delivers when bit 0x200 is set.
 */
struct lguest_data {
	uint32_t irq_enabled;
	uint32_t blocked_interrupts;
	uint32_t cr2;
	uint32_t time_sec, time_nsec;
	uint32_t irq_pending;
	uint8_t hcall_status[LHCALL_RING_SIZE];
	struct hcall_args hcalls[LHCALL_RING_SIZE];
	uint32_t reserve_mem;
	uint32_t tsc_khz;
	uint32_t noirq_start, noirq_end;
	uint32_t kernel_address;
	uint32_t syscall_vec;
};
_Static_assert(sizeof(struct lguest_data) == LGUEST_DATA_SIZE, "lguest_data layout");
_Static_assert(__builtin_offsetof(struct lguest_data, reserve_mem) == 1368, "reserve_mem");

/* boot_params ("zero page") fields the launcher fills (spec §2.4). */
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_ENTRIES 0x1E8
#define BP_E820_MAP 0x2D0

/* Virtio, legacy (0.9.5) as the lguest device page speaks it. */
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_CONFIG_S_ACKNOWLEDGE 1
#define VIRTIO_CONFIG_S_DRIVER 2
#define VIRTIO_CONFIG_S_DRIVER_OK 4
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_USED_F_NO_NOTIFY 1
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define LGUEST_VRING_ALIGN PAGE_SIZE

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_F_FLUSH 9
#define SECTOR_SIZE 512
#endif
#endif
