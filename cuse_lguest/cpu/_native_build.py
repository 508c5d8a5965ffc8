"""cffi (API mode) builder for the block-start stop hook.  Listed in setup.py's cffi_modules.

Unicorn 2.1.4 checks for a pending stop after every guest load and store and
then rewinds EIP to the start of the instruction, even when that instruction
has already stored: a read-modify-write then runs twice.  So no thread other
than the vCPU may call uc_emu_stop().  Instead, interrupt sources raise a flag
in a small per-Guest struct, and this C block hook, which runs at the start of
every translated block (before any of its memory accesses), calls
uc_emu_stop() when it sees the flag.  The hook never clears the flag: the vCPU
clears it *before* it looks at its pending work, so a request that arrives
between that look and the next emu_start is never lost.

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
        unsigned long stops;    /* how many times the hook stopped the vCPU */
    };
    void lg_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data);
""")
ffibuilder.set_source("cuse_lguest.cpu._native", r"""
    #include <stdint.h>
    struct lg_stop {
        volatile int flag;
        void *uc;
        int (*emu_stop)(void *uc);
        unsigned long stops;
    };
    void lg_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
    {
        struct lg_stop *s = user_data;
        (void)address; (void)size;
        if (s->flag) {
            s->stops++;
            s->emu_stop(uc);
        }
    }
""")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
