"""The emulated CPU: Unicorn 2.1.4, its verified hidden state, the switcher region and paging."""
from cuse_lguest.cpu.machine import Machine

__all__ = ["Machine"]
