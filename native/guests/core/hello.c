/* The smallest Guest: handshake, one console line, then power off (or reboot if asked). */
#include "lguest.h"

int main(void)
{
    init();
    print("hello from the core test guest\n");
    if (streq(cmdline(), "restart"))
        shutdown("rebooting", 2);
    shutdown("power off, bye", 1);
}
