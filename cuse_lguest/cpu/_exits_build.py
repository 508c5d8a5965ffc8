"""cffi (API mode) builder for the native exits.  Listed in setup.py's cffi_modules.

Every trap and software interrupt of the Guest arrives in one UC_HOOK_INTR
callback, lg_intr_hook, which Unicorn calls on the vCPU thread inside
emu_start.  It handles the exits whose outcome needs no decision at all,
the way lguest's host let the CPU deliver a Guest's system calls "directly",
and hands everything else, unchanged, to the Python handler (VCpu._on_intr),
which owns every policy decision and every kill text.

What C handles from ring 3: a software interrupt (`int n`) whose IDT gate
the Guest loaded and whose DPL lets ring 3 use it (a system call, or int3 to
a DPL-3 gate), a page fault the Guest's own handler must see (CR2 written
to lguest_data.cr2, the frame with the error code), and every other fault
interrupts.hardware_trap would reflect from ring 3 (#GP, #DE, #NM while the
Guest asked for TS, ...).  It builds
exactly the frame interrupts.push_frame builds, in the same order of reads
and writes: kernel stack from SET_STACK, SS and ESP, EFLAGS with IF taken
from lguest_data.irq_enabled, CS, EIP, the error code; the running EFLAGS
lose TF, VM, RF and NT; the ring switch patches CS, SS and the CPL in a
saved context exactly as Machine.enter_ring1 does, and old_exception is
reset as SavedContext.clear_old_exception does.

What C handles from ring 1: a hypercall that needs no decision, and the
async ring before it.  It does what VCpu._hypercall does: drain the ring
from the shared cursor (each call counted in its async slot), run the call,
flush the TLB once if any of them asked for it.  The calls C runs are
SET_PTE, SET_PGD, TS, FLUSH_TLB, and what a Linux task switch queues:
LOAD_TLS (the three descriptors into the live GDT with lguest's fix-up),
SET_STACK, and NEW_PGTABLE once paging is on (lg_pgd_copy, then CR3);
SET_CLOCKEVENT once Python has made the Guest's timerfd (lg_clock_set, as
Guest.set_clockevent arms it); and synchronously also FLUSH_ASYNC and
SEND_INTERRUPTS.  Each call is checked
as Hypercalls checks it, against the state the calls before it left, just
before it runs; one that would kill the Guest, or any other call, ends
C's part there, and Python goes on from the cursor: what C ran is the
prefix of Python's own drain, so the two cannot disagree.

And a page fault of the Guest kernel (ring 1), reflected as a user one is
(CR2, the frame with the error code), on the stack the kernel was using.

What C handles of HALT from ring 1 (lg_native_halt): the async ring as
above, then the halted Guest's half of VCpu._service and its sleep.  If an
IRQ the Guest does not block is pending, it is delivered as
interrupts.deliver_pending_irq delivers it to a halted Guest: irq_enabled
set to IF, the bit taken from the shared word (the atomic clear
IrqLine.take does) before the ring-1 frame is built, lguest_data.time
written from CLOCK_REALTIME as handshake.write_time writes it, irq_pending
cleared when no other candidate is left, the IRQ's profiler slot counted.
If none is, C sleeps in lg_irq_sleep itself (the IRQ line's own function,
handed over as an address): the binding calls emu_start through ctypes,
which releases the GIL, and this hook never takes it, so the sleep holds
nothing Python needs (the timer thread and the injectors run meanwhile).
After a sleep it clears the stop flag, as VCpu._sleep_then_service does.
An LHREQ_IRQ's mark is taken as Guest.pending_irqs takes it, and the
memory's sync point then runs in Python (VCpu._sync_for_native_halt,
behind the binding's guard) unless this memory has none.
Python may take over at any step (death, an interrupt request, the noirq
window, an IRQ with no gate, a frame that does not translate, a failed
read of the pipe): what C did until then (the ring drained, a sleep, the
sync point) is a prefix of what Python would have done, and Python running
the HALT from the start with an empty ring is the same HALT again.
VCpu.halted stays Python's own flag: C never sets it, and reports a HALT
it is in through `halting` (VCpu.halted reads both), which matters only to
other threads that ask (tests waiting for the halt); nothing on the vCPU
thread runs while C is in HALT except the sync point, which does not look.

What C handles of NOTIFY from ring 1 (lg_native_notify), when the vCPU was
given the eventfd table (struct lg_eventfds, eventfds.py) and the value is
registered there: the async ring as above, the memory's sync point before
a notify (VCpu._sync_for_native_notify, in Python behind the binding's
guard, mirror mode only), and the claim, i.e. the post to the launcher's
eventfd, in C without the GIL.  That last part is the point: posted from
Python, the eventfd woke the launcher's helper, and the vCPU then waited for
the GIL while an in-process helper ran its whole request.  A value no
eventfd claims goes back to the launcher through read(): Python's.  A sync
point that kills the Guest ends the exit as Python's would, without the
claim; the stop flag then stops emulation before the next block.

What C leaves to Python (returns before it has changed anything, bar the
ring's prefix above): the feature switched off, no lguest_data yet, a gate
that is missing or refuses ring 3, #NM while the Guest has not asked for
TS, any other trap from ring 1, a frame or page-table page that does not
translate into Guest RAM, a page fault whose page directory slot the Guest
changed behind our back (the mirror needs a re-copy), the first
NEW_PGTABLE (it turns paging on), any other hypercall (and a NOTIFY no
eventfd claims), a Guest that is
dead, an interrupt request from the device, an LHREQ_IRQ the vCPU has not
yet looked at, or a pending IRQ the Guest has not blocked.  Python would have acted on those right after the
exit; here it simply does it all.

The Guest state C only reads lives in struct lg_exits and is written by
Python whenever it changes (LOAD_IDT_ENTRY, LGUEST_INIT): Python stays the
owner, C keeps a copy.  What both sides change has one home that Python
uses in place: the ring cursor, the TS request and the kernel stack here
(AsyncRing.cursor, VCpu.ts, VCpu.kernel_stack), the current Guest page
directory in the mirror's struct lg_mirror, the GDT in the switcher
region (HostGdt.entry).  Both run on the vCPU thread only.
The C side never takes the GIL.

Nothing here links libunicorn: uc_reg_read, uc_reg_write, uc_context_save,
uc_context_restore and uc_ctl are the loaded library's own addresses, handed over
at run time (cpu/exits.py), like uc_emu_stop in _native_build.py.  The ABI
numbers are written into the C source at build time from cuse_lguest/abi.py,
so each number has one home.  Unicorn's register ids are not: the package is
built where the Unicorn binding may not be importable yet (pip's isolated
build environment), so the struct carries them, filled in at run time from
the binding's x86_const for each register named in REGISTERS.
"""
import importlib.util
import pathlib

from cffi import FFI


def _abi():
    """cuse_lguest/abi.py by path: importing the package would need its cffi modules, being built."""
    path = pathlib.Path(__file__).resolve().parent.parent / "abi.py"
    spec = importlib.util.spec_from_file_location("_lg_abi_for_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


abi = _abi()
# The registers C reads or writes: x->regid[LG_R_<name>] holds UC_X86_REG_<name>.
REGISTERS = ("CS", "SS", "ESP", "EIP", "EFLAGS", "CR2", "CR0", "CR3", "EAX", "EBX", "ECX", "EDX", "ESI")
_DEFINES = {
    "LG_IDT_ENTRIES": abi.IDT_ENTRIES,
    "LG_GDT_ENTRIES": abi.GDT_ENTRIES,
    "LG_GDT_KERNEL_CS": abi.GDT_ENTRY_KERNEL_CS,
    "LG_GUEST_PL": abi.GUEST_PL,
    "LG_GUEST_CS": abi.GUEST_CS,
    "LG_GATE_INTERRUPT": abi.GATE_INTERRUPT,
    "LG_EFLAGS_IF": abi.X86_EFLAGS_IF,
    "LG_EFLAGS_CLEARED": abi.X86_EFLAGS_TF | abi.X86_EFLAGS_VM | abi.X86_EFLAGS_RF | abi.X86_EFLAGS_NT,
    "LG_LD_IRQ_ENABLED": abi.LGUEST_DATA_IRQ_ENABLED,
    "LG_LD_BLOCKED": abi.LGUEST_DATA_BLOCKED_INTERRUPTS,
    "LG_LD_CR2": abi.LGUEST_DATA_CR2,
    "LG_PTE_PRESENT": abi.PTE_PRESENT,
    "LG_PTE_ACCESSED": abi.PTE_ACCESSED,
    "LG_PGD_ALLOWED": abi.PGD_ALLOWED_FLAGS,
    "LG_PAGE_FAULT": 14,
    "LG_NO_FPU": 7,
    "LG_ERROR_CODE_VECTORS": sum(1 << v for v in abi.ERROR_CODE_VECTORS),
    "LG_TRAP_ENTRY": abi.LGUEST_TRAP_ENTRY,
    "LG_HC_FLUSH_ASYNC": abi.LHCALL_FLUSH_ASYNC,
    "LG_HC_SEND_INTERRUPTS": abi.LHCALL_SEND_INTERRUPTS,
    "LG_HC_SET_PTE": abi.LHCALL_SET_PTE,
    "LG_HC_SET_PGD": abi.LHCALL_SET_PGD,
    "LG_HC_TS": abi.LHCALL_TS,
    "LG_HC_FLUSH_TLB": abi.LHCALL_FLUSH_TLB,
    "LG_HC_HALT": abi.LHCALL_HALT,
    "LG_HC_NOTIFY": abi.LHCALL_NOTIFY,
    "LG_FIRST_EXTERNAL": abi.FIRST_EXTERNAL_VECTOR,
    "LG_LD_TIME": abi.LGUEST_DATA_TIME,
    "LG_LD_IRQ_PENDING": abi.LGUEST_DATA_IRQ_PENDING,
    "LG_LD_HCALL_STATUS": abi.LGUEST_DATA_HCALL_STATUS,
    "LG_LD_HCALLS": abi.LGUEST_DATA_HCALLS,
    "LG_RING_SIZE": abi.LHCALL_RING_SIZE,
    "LG_HCALL_FREE": abi.HCALL_STATUS_FREE,
    "LG_PTE_DIRTY": abi.PTE_DIRTY,
    "LG_PTE_PSE": abi.PTE_PSE,
    "LG_PTRS_PER_PGD": abi.PTRS_PER_PGD,
    "LG_PAGE_SIZE": abi.PAGE_SIZE,
    "LG_HC_LOAD_TLS": abi.LHCALL_LOAD_TLS,
    "LG_HC_SET_STACK": abi.LHCALL_SET_STACK,
    "LG_HC_NEW_PGTABLE": abi.LHCALL_NEW_PGTABLE,
    "LG_HC_SET_CLOCKEVENT": abi.LHCALL_SET_CLOCKEVENT,
    "LG_GDT_TLS_MIN": abi.GDT_ENTRY_TLS_MIN,
    "LG_GDT_TLS_ENTRIES": abi.GDT_ENTRY_TLS_ENTRIES,
    "LG_DESC_DPL_MASK": abi.DESC_DPL_MASK,
    "LG_DESC_DPL_GUEST": abi.GUEST_PL << abi.DESC_DPL_SHIFT,
    "LG_DESC_ACCESSED": abi.DESC_ACCESSED,
    "LG_STACK_PAGES_MAX": abi.KERNEL_STACK_PAGES_MAX,
}

_CDEF = """
    enum lg_register { """ + ", ".join(f"LG_R_{r}" for r in REGISTERS) + """ };
    struct lg_gate {
        uint32_t offset;
        uint32_t dpl;
        uint32_t type;                  /* 0: no gate */
    };
    struct lg_mirror {                  /* PageDirectoryMirror's: which Guest table is current */
        int paging;                     /* 0: linear mode, virtual is physical */
        uint32_t guest_pgd;             /* gpa of the Guest's top level, when paging */
    };
    struct lg_exits {
        /* libunicorn, taken from the loaded library at run time */
        void *uc;
        int (*reg_read)(void *uc, int regid, void *value);
        int (*reg_write)(void *uc, int regid, const void *value);
        int (*context_save)(void *uc, void *context);
        int (*context_restore)(void *uc, void *context);
        int (*ctl)(void *uc, int control, ...);
        int tlb_flush;                  /* uc_ctl's code for UC_CTL_TLB_FLUSH (Machine.flush_tlb) */
        int regid[""" + str(len(REGISTERS)) + """];                  /* Unicorn's id of each register in enum lg_register */
        char *ctx;                      /* a uc_context (SavedContext's own) */
        uint32_t ctx_error_code, ctx_is_int, ctx_old_exception, ctx_hflags, ctx_segs;
        uint32_t seg_size, seg_cs, seg_ss;
        /* the slow path: VCpu._on_intr behind the binding's exception guard */
        void (*slow)(void *uc, uint32_t intno, void *user_data);
        /* where things are in this process */
        uint8_t *ram;
        uint64_t limit;
        uint64_t pfnlimit;
        uint32_t *host_pd;              /* the page directory mirror (switcher region) */
        uint32_t pd_addr;               /* its address, CR3's value while paging */
        uint32_t switcher_pde;          /* what its switcher slot holds */
        uint32_t switcher_slot;         /* its first slot that is not the Guest's */
        uint32_t switcher_base;         /* no SET_PTE may name an address from here up */
        uint64_t *gdt;                  /* the live GDT (switcher region) */
        volatile uint32_t *pending, *from_launcher, *alive, *interrupt;
        uint64_t *stat_count, *stat_ns;
        uint32_t trap_slot_base, hcall_slot_base, async_slot_base, hcall_slots;
        /* the Guest's state, copied in by Python when it changes */
        int enabled;
        int have_ld;
        uint32_t ld;
        struct lg_mirror *mirror;       /* the mirror's own: C changes it at NEW_PGTABLE */
        uint32_t kstack_ss, kstack_esp;
        int ts;                         /* the Guest asked for CR0.TS (LHCALL_TS); VCpu.ts reads it */
        uint32_t cr0_ts;                /* CR0's TS bit (Machine.set_ts) */
        uint32_t ring_cursor;           /* the async ring's, shared with AsyncRing */
        struct lg_gate idt[%d];
        uint64_t handled;               /* exits C delivered (tests look) */
        /* HALT (lg_native_halt): the IRQ line's sleep, the stop flag, the sync point */
        int (*irq_sleep)(void *irqs, int wait_fd, const volatile uint32_t *blocked);
        void *irqs;                     /* the line's struct lg_irqs (IrqLine.target) */
        int wait_fd;
        volatile int *stop_flag;
        void (*sync)(void *uc, uint32_t intno, void *user_data);   /* VCpu.sync_on_irq, or NULL */
        uint32_t noirq_start, noirq_end;
        uint32_t irq_slot_base, halt_sleep_slot;
        uint64_t slept_ns;              /* of the exit being handled: left out of its time */
        int halting;                    /* in a native HALT right now (VCpu.halted reports it) */
        int clock_fd;                   /* the Guest's clock event (a timerfd), or -1 */
        /* NOTIFY (lg_native_notify): the eventfd table, its lookup and claim, the sync point */
        void *eventfds;                 /* struct lg_eventfds, or NULL: every NOTIFY is Python's */
        int (*eventfds_has)(void *table, uint64_t value);
        int (*eventfds_claim)(void *table, uint64_t value, int look_first);
        void (*sync_notify)(void *uc, uint32_t value, void *user_data);   /* VCpu's, or NULL */
    };
    void lg_intr_hook(void *uc, uint32_t intno, void *user_data);
    int lg_clock_new(void);
    int lg_clock_set(int fd, uint32_t delta_ns);
    int lg_pgd_copy(const uint8_t *ram, uint64_t limit, uint64_t pfnlimit, uint32_t pgd_gpa,
                    uint32_t *host_pd, uint32_t slots, uint32_t switcher_pde);
""" % abi.IDT_ENTRIES

_SOURCE = r"""
    #include <stdint.h>
    #include <string.h>
    #include <time.h>
    #include <sys/timerfd.h>
""" + "".join(f"    #define {k} {v:#x}u\n" for k, v in _DEFINES.items()) + r"""
    #define LG_FRAME 0xFFFFF000u
""" + _CDEF + "".join(f"    #define LG_REG_{r} (x->regid[LG_R_{r}])\n" for r in REGISTERS) + r"""
    static uint64_t lg_now(void)
    {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
    }

    static void lg_stat(struct lg_exits *x, uint32_t slot, uint64_t ns)
    {
        __atomic_fetch_add(&x->stat_count[slot], 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&x->stat_ns[slot], ns, __ATOMIC_RELAXED);
    }

    static uint32_t lg_reg(struct lg_exits *x, int reg)
    {
        uint64_t v = 0;                 /* a selector read fills two bytes only */
        x->reg_read(x->uc, reg, &v);
        return (uint32_t)v;
    }

    static void lg_set_reg(struct lg_exits *x, int reg, uint32_t value)
    {
        uint64_t v = value;
        x->reg_write(x->uc, reg, &v);
    }

    /* Guest RAM as GuestMemory sees it: 0 unless [gpa, gpa+4) lies below the limit. */
    static int lg_in_ram(struct lg_exits *x, uint64_t gpa, uint64_t len)
    {
        return gpa + len <= x->limit;
    }

    static uint32_t lg_rd32(struct lg_exits *x, uint64_t gpa)
    {
        uint32_t v;
        memcpy(&v, x->ram + gpa, 4);
        return v;
    }

    static void lg_wr32(struct lg_exits *x, uint64_t gpa, uint32_t v)
    {
        memcpy(x->ram + gpa, &v, 4);
    }

    /* PageDirectoryMirror.translate: 1 and *gpa, or 0 (unmapped, or a page
     * table outside RAM, where Python's read would kill the Guest). */
    static int lg_translate(struct lg_exits *x, uint32_t vaddr, uint64_t *gpa)
    {
        if (!x->mirror->paging) {
            *gpa = vaddr;
            return 1;
        }
        uint32_t index = vaddr >> 22;
        if (index >= x->switcher_slot)
            return 0;
        uint32_t pde = x->host_pd[index];
        if (!(pde & LG_PTE_PRESENT))
            return 0;
        uint64_t at = (uint64_t)(pde & LG_FRAME) + ((vaddr >> 12) & 0x3FF) * 4;
        if (!lg_in_ram(x, at, 4))
            return 0;
        uint32_t pte = lg_rd32(x, at);
        if (!(pte & LG_PTE_PRESENT))
            return 0;
        *gpa = (pte & LG_FRAME) | (vaddr & 0xFFF);
        return 1;
    }

    /* Nothing Python would do right after the delivery: no death, no
     * interrupt request, no unseen LHREQ_IRQ, no IRQ the Guest would take. */
    static int lg_quiet(struct lg_exits *x)
    {
        if (!__atomic_load_n(x->alive, __ATOMIC_SEQ_CST) || __atomic_load_n(x->interrupt, __ATOMIC_SEQ_CST)
            || __atomic_load_n(x->from_launcher, __ATOMIC_SEQ_CST))
            return 0;
        uint32_t pending = __atomic_load_n(x->pending, __ATOMIC_SEQ_CST);
        return !(pending & ~lg_rd32(x, x->ld + LG_LD_BLOCKED));
    }

    /* PageDirectoryMirror._checked on the Guest's entry `index`: 1 and the
     * entry as our copy must hold it, or 0 where Python would kill the Guest. */
    static int lg_guest_pde(struct lg_exits *x, uint32_t index, uint32_t *entry)
    {
        uint64_t at = (uint64_t)x->mirror->guest_pgd + index * 4;
        if (!lg_in_ram(x, at, 4))
            return 0;
        uint32_t e = lg_rd32(x, at);
        if (!(e & LG_PTE_PRESENT)) {
            *entry = 0;
            return 1;
        }
        if ((e & 0xFFF & ~LG_PGD_ALLOWED) || (e >> 12) >= x->pfnlimit)
            return 0;
        *entry = e | LG_PTE_ACCESSED;
        return 1;
    }

    /* PageDirectoryMirror.sync's question without its answer: does our copy
     * of the slot for `vaddr` still say what the Guest's entry says? */
    static int lg_pde_current(struct lg_exits *x, uint32_t vaddr)
    {
        uint32_t index = vaddr >> 22, entry;
        if (!x->mirror->paging || index >= x->switcher_slot)
            return 1;
        return lg_guest_pde(x, index, &entry) && x->host_pd[index] == entry;
    }

    /* PageDirectoryMirror.load's copy and check, for NEW_PGTABLE (a Linux task
     * switch): 0 when done, 1 when the Guest's page lies outside RAM, 2 when
     * one of its entries is bad.  Nothing is written unless every entry is good. */
    int lg_pgd_copy(const uint8_t *ram, uint64_t limit, uint64_t pfnlimit, uint32_t pgd_gpa,
                    uint32_t *host_pd, uint32_t slots, uint32_t switcher_pde)
    {
        uint32_t copy[LG_PTRS_PER_PGD];
        uint64_t at = pgd_gpa & LG_FRAME;
        if (slots >= LG_PTRS_PER_PGD || at + 4 * LG_PTRS_PER_PGD > limit)
            return 1;
        memcpy(copy, ram + at, 4 * slots);
        for (uint32_t i = 0; i < slots; i++) {
            uint32_t e = copy[i];
            if (!(e & LG_PTE_PRESENT)) {
                copy[i] = 0;
                continue;
            }
            if ((e & 0xFFF & ~LG_PGD_ALLOWED) || (e >> 12) >= pfnlimit)
                return 2;
            copy[i] = e | LG_PTE_ACCESSED;
        }
        copy[slots] = switcher_pde;
        memcpy(host_pd, copy, 4 * (slots + 1));
        return 0;
    }

    static void lg_set_segment(struct lg_exits *x, uint32_t index, uint32_t selector, uint64_t desc)
    {
        char *at = x->ctx + x->ctx_segs + index * x->seg_size;
        uint32_t lo = (uint32_t)desc, hi = (uint32_t)(desc >> 32);
        uint64_t base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000u);
        uint32_t limit = (lo & 0xFFFF) | (hi & 0xF0000);
        if (hi & (1u << 23))
            limit = (limit << 12) | 0xFFF;
        memcpy(at, &selector, 4);
        memcpy(at + 8, &base, 8);
        memcpy(at + 16, &limit, 4);
        memcpy(at + 20, &hi, 4);
    }

    /* interrupts.push_frame, for a Guest at CPL 3.  The context was saved by
     * the caller.  0 (nothing changed) when any page is not where it must be. */
    static int lg_push_frame(struct lg_exits *x, const struct lg_gate *gate, uint32_t cs,
                             int with_err, uint32_t err, uint32_t eip)
    {
        uint32_t ss = lg_reg(x, LG_REG_SS), esp = lg_reg(x, LG_REG_ESP);
        uint32_t eflags = lg_reg(x, LG_REG_EFLAGS), running = eflags;
        int from_user = (ss & 3) != LG_GUEST_PL;
        uint32_t words[6], n = 0, new_ss = ss, new_esp = esp;
        if (from_user) {
            new_ss = x->kstack_ss;
            new_esp = x->kstack_esp;
            words[n++] = ss;
            words[n++] = esp;
        }
        if (!(lg_rd32(x, x->ld + LG_LD_IRQ_ENABLED) & LG_EFLAGS_IF))
            eflags &= ~LG_EFLAGS_IF;
        words[n++] = eflags;
        words[n++] = cs;
        words[n++] = eip;
        if (with_err)
            words[n++] = err;
        uint64_t gpa;
        if (!lg_translate(x, new_esp - 4, &gpa) || !lg_in_ram(x, gpa, 4) || gpa < 4 * (n - 1))
            return 0;
        for (uint32_t i = 0; i < n; i++)
            lg_wr32(x, gpa - 4 * i, words[i]);
        *(int32_t *)(x->ctx + x->ctx_old_exception) = -1;
        if (from_user) {
            uint32_t *hflags = (uint32_t *)(x->ctx + x->ctx_hflags);
            lg_set_segment(x, x->seg_cs, LG_GUEST_CS, x->gdt[LG_GDT_KERNEL_CS]);
            lg_set_segment(x, x->seg_ss, new_ss, x->gdt[(new_ss >> 3) & (LG_GDT_ENTRIES - 1)]);
            *hflags = (*hflags & ~3u) | LG_GUEST_PL;
        }
        x->context_restore(x->uc, x->ctx);
        lg_set_reg(x, LG_REG_ESP, new_esp - 4 * n);
        lg_set_reg(x, LG_REG_EFLAGS, running & ~LG_EFLAGS_CLEARED);
        lg_set_reg(x, LG_REG_EIP, gate->offset);
        if (gate->type == LG_GATE_INTERRUPT)
            lg_wr32(x, x->ld + LG_LD_IRQ_ENABLED, 0);
        return 1;
    }

    /* ---- hypercalls (Hypercalls and AsyncRing, for the calls that need no decision) ---- */
    struct lg_call {
        uint32_t nr, a1, a2, a3, a4;
    };

    /* Does SET_PGD(a1 = top level, a2 = index) touch our copy (Hypercalls._set_pgd)? */
    static int lg_pgd_applies(struct lg_exits *x, const struct lg_call *c)
    {
        return x->mirror->paging && x->mirror->guest_pgd == (c->a1 & LG_FRAME) && c->a2 < x->switcher_slot;
    }

    /* Would Hypercalls.execute finish this call without a decision and without
     * a kill?  SET_PTE, SET_PGD, TS and FLUSH_TLB, queued or not; synchronously
     * also FLUSH_ASYNC and SEND_INTERRUPTS, whose exit is all they are for. */
    static int lg_call_simple(struct lg_exits *x, const struct lg_call *c, int queued)
    {
        uint32_t entry;
        switch (c->nr) {
        case LG_HC_FLUSH_ASYNC:
        case LG_HC_SEND_INTERRUPTS:
            return !queued;
        case LG_HC_TS:
        case LG_HC_FLUSH_TLB:
            return 1;
        case LG_HC_SET_PTE:
            if (c->a2 >= x->switcher_base)
                return 0;
            if ((c->a3 & LG_PTE_PRESENT) && (c->a3 & (LG_PTE_ACCESSED | LG_PTE_DIRTY))
                && ((c->a3 & LG_PTE_PSE) || (c->a3 >> 12) >= x->pfnlimit))
                return 0;
            return 1;
        case LG_HC_SET_PGD:
            if (c->a2 >= LG_PTRS_PER_PGD)
                return 0;
            return !lg_pgd_applies(x, c) || lg_guest_pde(x, c->a2, &entry);
        }
        return 0;
    }

    /* Run a simple call; 1 if it needs a TLB flush. */
    static int lg_call_run(struct lg_exits *x, const struct lg_call *c)
    {
        uint32_t entry;
        if (c->nr == LG_HC_SET_PTE)
            return c->a3 == 0;          /* the Guest's "flush this address" */
        if (c->nr == LG_HC_FLUSH_TLB)
            return 1;
        if (c->nr == LG_HC_TS) {        /* Hypercalls._ts: remember it, and set CR0.TS as asked */
            uint32_t cr0 = lg_reg(x, LG_REG_CR0);
            x->ts = c->a1 != 0;
            lg_set_reg(x, LG_REG_CR0, x->ts ? cr0 | x->cr0_ts : cr0 & ~x->cr0_ts);
            return 0;
        }
        if (c->nr == LG_HC_SET_PGD && lg_pgd_applies(x, c) && lg_guest_pde(x, c->a2, &entry)
            && x->host_pd[c->a2] != entry) {
            x->host_pd[c->a2] = entry;
            return 1;
        }
        return 0;
    }

    static void lg_ring_call(struct lg_exits *x, uint32_t slot, struct lg_call *c)
    {
        memcpy(c, x->ram + x->ld + LG_LD_HCALLS + slot * sizeof *c, sizeof *c);
    }

    /* ---- the task switch: LOAD_TLS, SET_STACK, NEW_PGTABLE (Linux queues them at
     * every switch and flushes the ring) ---- */

    /* Hypercalls._load_tls and HostGdt.load_tls: the three TLS descriptors from
     * Guest RAM into the live GDT, each with lguest's fix-up (fix_descriptor).
     * 0 with nothing written where Python's read would kill the Guest. */
    static int lg_load_tls(struct lg_exits *x, uint32_t gpa)
    {
        if (!lg_in_ram(x, gpa, 8 * LG_GDT_TLS_ENTRIES))
            return 0;
        for (uint32_t k = 0; k < LG_GDT_TLS_ENTRIES; k++) {
            uint64_t desc;
            memcpy(&desc, x->ram + gpa + 8 * k, 8);
            if (!(desc & LG_DESC_DPL_MASK))
                desc |= LG_DESC_DPL_GUEST;
            x->gdt[LG_GDT_TLS_MIN + k] = desc | LG_DESC_ACCESSED;
        }
        return 1;
    }

    /* Hypercalls._set_stack: each named page must translate into Guest RAM.
     * 0 with nothing changed where Python would kill the Guest. */
    static int lg_set_stack(struct lg_exits *x, uint32_t ss, uint32_t esp, uint32_t pages)
    {
        if ((ss & 3) != LG_GUEST_PL || pages > LG_STACK_PAGES_MAX)
            return 0;
        for (uint32_t i = 0; i < pages; i++) {
            uint64_t gpa;
            if (!lg_translate(x, esp - 1 - i * LG_PAGE_SIZE, &gpa) || gpa >= x->limit)
                return 0;
        }
        x->kstack_ss = ss;
        x->kstack_esp = esp;
        return 1;
    }

    /* Machine.new_pgtable once paging is on (the first one, which turns it on,
     * is Python's): PageDirectoryMirror.load's copy and check, then CR3, whose
     * write also flushes Unicorn's TLB.  0 with nothing changed where Python
     * would kill the Guest. */
    static int lg_new_pgtable(struct lg_exits *x, uint32_t pgd)
    {
        if (!x->mirror->paging || !lg_in_ram(x, pgd & LG_FRAME, LG_PAGE_SIZE)
            || lg_pgd_copy(x->ram, x->limit, x->pfnlimit, pgd, x->host_pd, x->switcher_slot, x->switcher_pde))
            return 0;
        x->mirror->guest_pgd = pgd & LG_FRAME;
        lg_set_reg(x, LG_REG_CR3, x->pd_addr);
        return 1;
    }

    /* ---- the clock event: a timerfd the timer service watches (core/timer.py) ---- */

    /* A Guest's clock event, one-shot, on the monotonic clock, non-blocking
     * for the service's poll; -1 and errno when the process has no fd left. */
    int lg_clock_new(void)
    {
        return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    }

    /* LHCALL_SET_CLOCKEVENT, for Python (Guest.set_clockevent) and C alike:
     * one interrupt delta_ns from now, replacing any earlier one; 0 cancels. */
    int lg_clock_set(int fd, uint32_t delta_ns)
    {
        struct itimerspec t = { { 0, 0 }, { delta_ns / 1000000000u, delta_ns % 1000000000u } };
        return timerfd_settime(fd, 0, &t, NULL);
    }

    /* Hypercalls.execute for one call, checked against the state the calls
     * before it left, and run when it needs no decision and cannot kill:
     * 1 when done (*flush set if it wants the TLB flushed), 0 for Python,
     * nothing changed. */
    static int lg_call_now(struct lg_exits *x, const struct lg_call *c, int queued, int *flush)
    {
        switch (c->nr) {
        case LG_HC_LOAD_TLS:
            return lg_load_tls(x, c->a1);
        case LG_HC_SET_STACK:
            return lg_set_stack(x, c->a1, c->a2, c->a3);
        case LG_HC_NEW_PGTABLE:
            return lg_new_pgtable(x, c->a1);
        case LG_HC_SET_CLOCKEVENT:
            return x->clock_fd >= 0 && lg_clock_set(x->clock_fd, c->a1) == 0;
        }
        if (!lg_call_simple(x, c, queued))
            return 0;
        *flush |= lg_call_run(x, c);
        return 1;
    }

    /* AsyncRing.drain, for as long as C can run each call: from the shared
     * cursor, in ring order, one copy of the status bytes, each call counted
     * in its async slot and its slot freed.  1 when the ring is drained, 0
     * when a call is left at the cursor for Python (what ran is the prefix of
     * Python's own drain, which goes on from there). */
    static int lg_ring_drain(struct lg_exits *x, int *flush)
    {
        uint8_t *status = x->ram + x->ld + LG_LD_HCALL_STATUS;
        uint8_t queued[LG_RING_SIZE];
        struct lg_call c;
        if (status[x->ring_cursor % LG_RING_SIZE] == LG_HCALL_FREE)
            return 1;
        memcpy(queued, status, sizeof queued);    /* one copy, as drain() takes */
        for (uint32_t n = 0; n < LG_RING_SIZE; n++) {
            uint32_t slot = x->ring_cursor % LG_RING_SIZE;
            if (queued[slot] == LG_HCALL_FREE)
                break;
            uint64_t started = lg_now();
            lg_ring_call(x, slot, &c);
            if (!lg_call_now(x, &c, 1, flush))
                return 0;
            lg_stat(x, x->async_slot_base + (c.nr < x->hcall_slots ? c.nr : x->hcall_slots - 1),
                    lg_now() - started);
            status[slot] = LG_HCALL_FREE;
            x->ring_cursor = (slot + 1) % LG_RING_SIZE;
        }
        return 1;
    }

    /* VCpu._hypercall: the ring, then the call.  Its stats slot, or -1 for
     * Python, which goes on from wherever C stopped. */
    static int lg_native_hcall(struct lg_exits *x)
    {
        struct lg_call c = { lg_reg(x, LG_REG_EAX), lg_reg(x, LG_REG_EBX), lg_reg(x, LG_REG_ECX),
                             lg_reg(x, LG_REG_EDX), lg_reg(x, LG_REG_ESI) };
        int flush = 0;
        int done = lg_ring_drain(x, &flush) && lg_call_now(x, &c, 0, &flush);
        if (flush)
            x->ctl(x->uc, x->tlb_flush);
        return done ? (int)(x->hcall_slot_base + c.nr) : -1;
    }

    /* handshake.write_time: lguest_data.time = CLOCK_REALTIME as {u32 sec, u32 nsec}, in one write. */
    static void lg_write_time(struct lg_exits *x)
    {
        struct timespec t;
        uint32_t words[2];
        clock_gettime(CLOCK_REALTIME, &t);
        words[0] = (uint32_t)t.tv_sec;
        words[1] = (uint32_t)t.tv_nsec;
        memcpy(x->ram + x->ld + LG_LD_TIME, words, sizeof words);
    }

    /* interrupts.deliver_pending_irq for a halted Guest, `candidates` being
     * the pending IRQs it does not block (not 0): 1 when delivered, 0 for
     * Python with nothing changed (no gate, a stack that does not translate). */
    static int lg_deliver_halted(struct lg_exits *x, uint32_t candidates, uint32_t eip)
    {
        uint32_t irq = (uint32_t)__builtin_ctz(candidates), bit = 1u << irq;
        const struct lg_gate *gate = &x->idt[LG_FIRST_EXTERNAL + irq];
        if (!gate->type)
            return 0;
        uint32_t cs = lg_reg(x, LG_REG_CS);
        uint32_t irq_enabled = lg_rd32(x, x->ld + LG_LD_IRQ_ENABLED);
        x->context_save(x->uc, x->ctx);
        lg_wr32(x, x->ld + LG_LD_IRQ_ENABLED, LG_EFLAGS_IF);      /* halted: the Guest takes it */
        __atomic_and_fetch(x->pending, ~bit, __ATOMIC_SEQ_CST);   /* IrqLine.take, before the frame */
        if (!lg_push_frame(x, gate, cs, 0, 0, eip)) {
            /* Undone, for Python to kill the Guest with its own text: a raise
             * of the same IRQ meanwhile is the same bit, so nothing is lost. */
            __atomic_or_fetch(x->pending, bit, __ATOMIC_SEQ_CST);
            lg_wr32(x, x->ld + LG_LD_IRQ_ENABLED, irq_enabled);
            return 0;
        }
        lg_stat(x, x->irq_slot_base + irq, 0);
        lg_write_time(x);
        if (!(candidates & ~bit))
            lg_wr32(x, x->ld + LG_LD_IRQ_PENDING, 0);
        return 1;
    }

    /* The halted Guest's half of VCpu._service and its sleep, until an IRQ
     * is delivered (the HALT's stats slot) or Python must take over (-1). */
    static int lg_halt_until_irq(struct lg_exits *x, uint32_t eip)
    {
        for (;;) {
            if (!__atomic_load_n(x->alive, __ATOMIC_SEQ_CST) || __atomic_load_n(x->interrupt, __ATOMIC_SEQ_CST))
                return -1;              /* death, or the device wants the vCPU: Python's */
            /* Guest.pending_irqs: the word first, then the launcher's mark. */
            uint32_t pending = __atomic_load_n(x->pending, __ATOMIC_SEQ_CST);
            if ((pending || __atomic_load_n(x->from_launcher, __ATOMIC_SEQ_CST))
                && __atomic_exchange_n(x->from_launcher, 0, __ATOMIC_SEQ_CST) && x->sync) {
                x->sync(x->uc, 0, NULL);
                if (!__atomic_load_n(x->alive, __ATOMIC_SEQ_CST))
                    return -1;          /* the sync point killed the Guest */
            }
            uint32_t candidates = pending & ~lg_rd32(x, x->ld + LG_LD_BLOCKED);
            if (candidates)
                return lg_deliver_halted(x, candidates, eip) ? (int)(x->hcall_slot_base + LG_HC_HALT) : -1;
            uint64_t started = lg_now();
            int err = x->irq_sleep(x->irqs, x->wait_fd, (const volatile uint32_t *)(x->ram + x->ld + LG_LD_BLOCKED));
            uint64_t slept = lg_now() - started;
            lg_stat(x, x->halt_sleep_slot, slept);
            x->slept_ns += slept;
            __atomic_store_n(x->stop_flag, 0, __ATOMIC_SEQ_CST);   /* the kick's: see VCpu._sleep_then_service */
            if (err)
                return -1;              /* Python's sleep raises it */
        }
    }


    /* LHCALL_HALT from ring 1: what VCpu._hypercall, Hypercalls._halt and the
     * hook's sleep-then-service loop do, when the answer is certain.  Its
     * stats slot, or -1 for Python.  Python may take over at any point below:
     * what C did until then (the ring drained, a sleep, a sync point taken)
     * is a prefix of what Python would have done, and Python's HALT from the
     * start with an empty ring is the same HALT again. */
    static int lg_native_halt(struct lg_exits *x)
    {
        uint32_t eip = lg_reg(x, LG_REG_EIP);
        if (!x->irq_sleep || (eip >= x->noirq_start && eip < x->noirq_end))
            return -1;                  /* no line, or the retry tick's case: Python's */
        int flush = 0, drained = lg_ring_drain(x, &flush);
        if (flush)
            x->ctl(x->uc, x->tlb_flush);
        if (!drained)
            return -1;
        __atomic_store_n(&x->halting, 1, __ATOMIC_SEQ_CST);
        int slot = lg_halt_until_irq(x, eip);
        __atomic_store_n(&x->halting, 0, __ATOMIC_SEQ_CST);
        return slot;
    }

    /* interrupts.page_fault, the context saved: CR2 for the Guest, then the
     * frame with the error code.  0 for Python (the mirror needs a re-copy,
     * or the frame does not translate).  Should the frame fail, Python's
     * first step is to write the very same CR2, so writing it here changes
     * nothing. */
    static int lg_reflect_page_fault(struct lg_exits *x, const struct lg_gate *gate, uint32_t cs)
    {
        uint32_t cr2 = lg_reg(x, LG_REG_CR2);
        uint32_t err = (uint32_t)*(int32_t *)(x->ctx + x->ctx_error_code);
        if (!lg_pde_current(x, cr2))
            return 0;
        lg_wr32(x, x->ld + LG_LD_CR2, cr2);
        return lg_push_frame(x, gate, cs, 1, err, lg_reg(x, LG_REG_EIP));
    }

    /* A page fault of the Guest kernel (ring 1): the 3.x host reflected it
     * exactly as a user one once its shadow fix-up found the fault real, and
     * with our MMU walking the Guest's own tables every fault whose page
     * directory slot is current is real.  The frame stays on the kernel's
     * stack.  Its stats slot, or -1 for Python (which also takes an `int $14`
     * from the kernel: a software interrupt, not a fault). */
    static int lg_kernel_page_fault(struct lg_exits *x, uint32_t cs)
    {
        const struct lg_gate *gate = &x->idt[LG_PAGE_FAULT];
        if (!gate->type || !lg_quiet(x))
            return -1;
        x->context_save(x->uc, x->ctx);
        if (*(int32_t *)(x->ctx + x->ctx_is_int) || !lg_reflect_page_fault(x, gate, cs))
            return -1;
        return (int)(x->trap_slot_base + 2 * LG_PAGE_FAULT);
    }

    /* LHCALL_NOTIFY from ring 1 whose value an eventfd claims: what
     * VCpu._hypercall and the NOTIFY half of VCpu._service do.  Its stats
     * slot, or -1 for Python (nothing done but the ring's prefix). */
    static int lg_native_notify(struct lg_exits *x)
    {
        uint32_t value = lg_reg(x, LG_REG_EBX);
        if (!x->eventfds || !x->eventfds_has(x->eventfds, value))
            return -1;                  /* value 0 is never registered: no NOTIFY at all */
        int flush = 0, drained = lg_ring_drain(x, &flush);
        if (flush)
            x->ctl(x->uc, x->tlb_flush);
        if (!drained)
            return -1;                  /* Python goes on from where the drain stopped */
        if (x->sync_notify) {
            x->sync_notify(x->uc, value, NULL);
            if (!__atomic_load_n(x->alive, __ATOMIC_SEQ_CST)) {
                __atomic_store_n(x->stop_flag, 1, __ATOMIC_SEQ_CST);   /* Python's emu_stop after a kill */
                return (int)(x->hcall_slot_base + LG_HC_NOTIFY);
            }
        }
        x->eventfds_claim(x->eventfds, value, 1);
        return (int)(x->hcall_slot_base + LG_HC_NOTIFY);
    }

    /* The exit as C can finish it: its stats slot, or -1 for Python. */
    static int lg_native_exit(struct lg_exits *x, uint32_t intno)
    {
        if (!x->enabled || !x->have_ld || intno >= LG_IDT_ENTRIES)
            return -1;
        uint32_t cs = lg_reg(x, LG_REG_CS);
        if (intno == LG_TRAP_ENTRY && (cs & 3) == LG_GUEST_PL) {
            uint32_t nr = lg_reg(x, LG_REG_EAX);
            if (nr == LG_HC_HALT)
                return lg_native_halt(x);
            if (!lg_quiet(x))
                return -1;
            return nr == LG_HC_NOTIFY ? lg_native_notify(x) : lg_native_hcall(x);
        }
        if (intno == LG_PAGE_FAULT && (cs & 3) == LG_GUEST_PL)
            return lg_kernel_page_fault(x, cs);
        if ((cs & 3) != 3 || !lg_quiet(x))
            return -1;
        const struct lg_gate *gate = &x->idt[intno];
        if (!gate->type)
            return -1;
        x->context_save(x->uc, x->ctx);
        if (*(int32_t *)(x->ctx + x->ctx_is_int)) {
            if (gate->dpl < 3)
                return -1;              /* the #GP that refusal becomes is Python's */
            if (!lg_push_frame(x, gate, cs, 0, 0, lg_reg(x, LG_REG_EIP)))
                return -1;
        } else if (intno == LG_PAGE_FAULT) {
            if (!lg_reflect_page_fault(x, gate, cs))
                return -1;
        } else if (intno == LG_NO_FPU && !x->ts) {
            return -1;                  /* lazy FPU state is the host's business: Python's */
        } else {
            /* interrupts.reflect: every other fault from ring 3 is the Guest's. */
            uint32_t err = (uint32_t)*(int32_t *)(x->ctx + x->ctx_error_code);
            int with_err = intno < 32 && (LG_ERROR_CODE_VECTORS >> intno) & 1;
            if (!lg_push_frame(x, gate, cs, with_err, err, lg_reg(x, LG_REG_EIP)))
                return -1;
        }
        return (int)(x->trap_slot_base + 2 * intno + 1);
    }

    void lg_intr_hook(void *uc, uint32_t intno, void *user_data)
    {
        struct lg_exits *x = user_data;
        uint64_t started = lg_now();
        x->slept_ns = 0;
        int slot = lg_native_exit(x, intno);
        if (slot < 0) {
            x->slow(uc, intno, NULL);
            return;
        }
        x->handled++;
        lg_stat(x, (uint32_t)slot, lg_now() - started - x->slept_ns);
    }
"""

ffibuilder = FFI()
ffibuilder.cdef(_CDEF)
ffibuilder.set_source("cuse_lguest.cpu._exits", _SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
