"""How crl's job runners set up a process that trains: torch's threads and glibc's ``malloc``.

:class:`ProcessSettings` is what ``python -m crl.train`` and ``python -m crl.study`` apply in each
process that trains (``--torch-threads``, ``--keep-freed-memory``).

A gradient step on image batches allocates and frees tens of megabytes: the float batches of frames,
the activations, the gradients, Adam's temporaries, oneDNN's copies of a convolution's input. By
default glibc gives the top of its heap back to the kernel whenever more than its trim threshold is
free there (twice the largest block it has mapped and freed: a dozen megabytes after NatureCNN's
6.4 MB gradient), maps every block from 32 MiB up on its own and unmaps it when freed, and the next
step page-faults those pages in again. On DQN's Atari throughput run (4,000 steps) that is 0.3 to
4.8 million minor faults, at about 2.4 us each (``docs/performance.md``, "One process per run"); on
PPO's (4,096 steps, minibatches of 256 frame stacks) the first convolution's input, copied by oneDNN
into a 57.8 MB block with its 4 channels padded to 8, is mapped and faulted in at every gradient step.

:func:`keep_freed_memory` sets glibc's ``malloc`` of the calling process, as its environment
variables ``MALLOC_MMAP_MAX_=0`` and ``MALLOC_TRIM_THRESHOLD_`` would at start-up: every block comes
from the heap (none gets a mapping of its own), and the heap is trimmed only once 1 GiB is free at
its top. The process then keeps its heap's high-water mark instead of returning it after each step.
A large block freed below the top (a finished run's replay buffer) stays resident until the heap
reuses it; :func:`release_freed_memory`, which the job runners call before each run, gives such
memory back. The allocator belongs to the whole process, so crl's library never calls these; crl's
job runners (``python -m crl.train``, ``python -m crl.study``) do, in the processes they own, unless
``--no-keep-freed-memory`` is given or the environment already sets one of glibc's variables.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import sys
from dataclasses import dataclass

import torch as th

MMAP_MAX = 0
"""How many blocks may have a mapping of their own: none (glibc's default is 65,536 from 32 MiB up)."""

TRIM_THRESHOLD = 1024 * 1024 * 1024
"""The free memory at the heap's top above which glibc gives it back to the kernel."""

ENVIRONMENT_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
"""glibc's own settings of where blocks come from and of the trim, read at start-up; they take precedence."""

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def has_glibc_malloc() -> bool:
    """Whether this process allocates with glibc's ``malloc`` (Linux with glibc; not musl, macOS, Windows)."""
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Set glibc's ``malloc`` of this process to keep freed memory (see the module's docstring).

    :return: whether glibc was set: ``False`` without glibc (macOS, Windows, musl) or when one of
        :data:`ENVIRONMENT_VARIABLES` is set in the environment
    """
    if any(name in os.environ for name in ENVIRONMENT_VARIABLES):
        return False
    if not has_glibc_malloc():
        return False
    mallopt = _libc().mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success
    return mallopt(_M_MMAP_MAX, MMAP_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


def release_freed_memory() -> bool:
    """Give the kernel the heap's free memory back, below its top too (glibc's ``malloc_trim(0)``).

    Garbage is collected first: a model's reference cycles can hold its replay buffer. The job
    runners call this before each run, so that a process that keeps freed memory does not also keep
    the buffers of the runs it has finished.

    :return: whether any memory was given back (``False`` without glibc)
    """
    if not has_glibc_malloc():
        return False
    gc.collect()
    malloc_trim = _libc().malloc_trim
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim.restype = ctypes.c_int
    return malloc_trim(0) == 1


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6")


KEEP_FREED_MEMORY_HELP = (
    "let glibc's malloc keep freed memory (every block from the heap, trimmed above 1 GiB free) instead "
    "of returning it after each gradient step, which page-faults it back: up to 10 %% of an Atari run's time "
    "(default; skipped when MALLOC_MMAP_MAX_, MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ is set)"
)
"""The ``--keep-freed-memory`` option's help, shared by both command lines."""


def leave_process_group() -> None:
    """Move this worker process out of the terminal's process group: a Ctrl-C reaches it only from its
    parent, once (it would otherwise get the terminal's and the parent's, and stop at once)."""
    if hasattr(os, "setpgrp"):  # POSIX
        os.setpgrp()


def add_keep_freed_memory_option(parser: argparse.ArgumentParser) -> None:
    """``--keep-freed-memory`` / ``--no-keep-freed-memory`` (default on)."""
    parser.add_argument(
        "--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True, help=KEEP_FREED_MEMORY_HELP
    )


@dataclass(frozen=True)
class ProcessSettings:
    """What a job runner sets in each process that trains.

    :param torch_threads: torch's intra-op threads (``th.set_num_threads``)
    :param keep_freed_memory: call :func:`keep_freed_memory`
    """

    torch_threads: int = 1
    keep_freed_memory: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ProcessSettings:
        """The settings of a parsed command line (``--torch-threads``, ``--keep-freed-memory``)."""
        return cls(torch_threads=args.torch_threads, keep_freed_memory=args.keep_freed_memory)

    def apply(self) -> None:
        """Set them in the calling process (the allocator's setting lasts as long as the process)."""
        th.set_num_threads(self.torch_threads)
        if self.keep_freed_memory:
            keep_freed_memory()
