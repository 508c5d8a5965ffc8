"""cffi (API mode) builder for the vCPU stop flag.  Listed in setup.py's cffi_modules.

Unicorn 2.1.4 checks for a pending stop after every guest load and store and
then rewinds EIP to the start of the instruction, even when that instruction
has already stored: a read-modify-write then runs twice.  So no thread other
than the vCPU may call uc_emu_stop().  Instead, interrupt sources raise the
flag in a small per-Guest struct, and lg_block_hook, a UC_HOOK_BLOCK callback
that runs at the start of every translated block (before any of its memory
accesses), calls uc_emu_stop() when it sees the flag.  About a fifth of guest
compute goes to the hook call; a Unicorn patch that read the flag at block
starts without a hook was reverted (docs/performance.md, guest_compute).

Nothing but the vCPU clears the flag, and it does so *before* it looks at its
pending work, so a request that arrives between that look and the next
emu_start is never lost.  lg_stop_clear is a sequentially consistent store:
a plain one may become visible only after the vCPU's following loads of the
pending state (x86 store buffer), and then overwrite a request made meanwhile.

uc_emu_stop's address is handed over at run time, so this module does not
link against libunicorn (the stock wheel ships no headers).
"""
from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("""
    struct lg_stop {
        volatile int flag;      /* set by any thread: stop at the next block */
        void *uc;               /* the uc_engine handle */
        int (*emu_stop)(void *uc);
    };
    void lg_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data);
    void lg_stop_clear(struct lg_stop *s);
""")
ffibuilder.set_source("cuse_lguest.cpu._native", r"""
    #include <stdint.h>
    struct lg_stop {
        volatile int flag;
        void *uc;
        int (*emu_stop)(void *uc);
    };
    void lg_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
    {
        struct lg_stop *s = user_data;
        (void)address; (void)size;
        if (s->flag)
            s->emu_stop(uc);
    }
    void lg_stop_clear(struct lg_stop *s)
    {
        __atomic_store_n(&s->flag, 0, __ATOMIC_SEQ_CST);
    }
""")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
