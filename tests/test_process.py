"""``crl.process``: the job runners' process settings, glibc's allocator kept from page-faulting."""

import os
import subprocess
import sys

import pytest
import torch as th

from crl import process
from crl.process import ENVIRONMENT_VARIABLES, ProcessSettings, has_glibc_malloc
from crl.study.cli import parse_args as study_args
from crl.train import parse_args as train_args

glibc_only = pytest.mark.skipif(not has_glibc_malloc(), reason="glibc's malloc only")

LIBC = """
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
"""
"""The C library's ``malloc``, ``free`` and ``memset``, for the scripts below."""

# A gradient step's churn, scaled up: 60 to 80 MB of blocks allocated, touched and freed, ten times
# over. By default glibc trims the freed top of its heap each time (blocks below 32 MiB) or unmaps
# each block (from 32 MiB up, such as oneDNN's copy of PPO's minibatch of frames), and the next round
# faults it in again (15,000 to 20,000 pages a round); kept, only the first round faults.
CHURN = """
import resource, sys
from crl.process import keep_freed_memory

size, count = int(sys.argv[2]) * 1024 * 1024, int(sys.argv[3])

def churn():
    blocks = [libc.malloc(size) for _ in range(count)]
    for block in blocks:
        libc.memset(block, 1, size)
    for block in blocks:
        libc.free(block)

kept = keep_freed_memory() if sys.argv[1] == "keep" else None
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    churn()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

SMALL_BLOCKS = ("10", "6")
"""Six blocks of 10 MiB, below glibc's largest threshold for its own mappings: a gradient step's tensors."""

LARGE_BLOCKS = ("40", "2")
"""Two blocks of 40 MiB, above it: each gets a mapping of its own by default."""


def _run_with_libc(script: str, *args: str, **environment: str) -> list[str]:
    """The words ``script`` (after :data:`LIBC`) prints in a fresh process, whose environment sets none of
    glibc's ``malloc`` variables but those given."""
    env = {name: value for name, value in os.environ.items() if name not in ENVIRONMENT_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", LIBC + script, *args],
        env={**env, **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


def _churn(how: str, blocks: tuple[str, str] = SMALL_BLOCKS, **environment: str) -> tuple[str, int]:
    """(what ``keep_freed_memory`` returned, minor page faults of the repeated churn) in a fresh process."""
    kept, faults = _run_with_libc(CHURN, how, *blocks, **environment)
    return kept, int(faults)


@glibc_only
@pytest.mark.parametrize("blocks", [SMALL_BLOCKS, LARGE_BLOCKS], ids=["10 MiB blocks", "40 MiB blocks"])
def test_kept_freed_memory_is_reused_without_page_faults(blocks: tuple[str, str]) -> None:
    _, faults_by_default = _churn("default", blocks)
    kept, faults_kept = _churn("keep", blocks)
    assert faults_by_default > 100_000
    assert kept == "True"
    assert faults_kept < 1_000


@glibc_only
@pytest.mark.parametrize(
    ("variable", "value", "blocks"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "65536", SMALL_BLOCKS),  # a 64 KiB trim threshold
        ("MALLOC_MMAP_THRESHOLD_", "65536", SMALL_BLOCKS),  # every block from 64 KiB up mapped
        ("MALLOC_MMAP_MAX_", "65536", LARGE_BLOCKS),  # glibc's default: blocks from 32 MiB up mapped
    ],
)
def test_the_environment_s_own_malloc_setting_is_left_alone(variable: str, value: str, blocks: tuple[str, str]) -> None:
    # glibc read the user's setting at start-up: the churn faults as by default
    kept, faults = _churn("keep", blocks, **{variable: value})
    assert kept == "False"
    assert faults > 100_000


# A finished run's 200 MB buffer freed below the heap's top (a later block stays), in a process that
# keeps freed memory: resident until released.
RELEASE = """
from crl.process import keep_freed_memory, release_freed_memory

def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 // 2**20

assert keep_freed_memory()
size = 200 * 2**20
buffer = libc.malloc(size)
libc.memset(buffer, 1, size)
later = libc.malloc(1024)
libc.free(buffer)
freed = resident_mib()
released = release_freed_memory()
print(released, freed - resident_mib())
"""


@glibc_only
def test_releasing_gives_a_kept_buffer_back() -> None:
    released, returned_mib = _run_with_libc(RELEASE)
    assert released == "True"
    assert 190 <= int(returned_mib) <= 210


def test_settings_set_torch_threads_and_keep_memory_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(process, "keep_freed_memory", lambda: calls.append("kept") or True)
    threads = th.get_num_threads()
    try:
        ProcessSettings(torch_threads=2, keep_freed_memory=False).apply()
        assert th.get_num_threads() == 2
        assert calls == []
        ProcessSettings(torch_threads=1).apply()
        assert th.get_num_threads() == 1
        assert calls == ["kept"]
    finally:
        th.set_num_threads(threads)


@pytest.mark.parametrize("parse_args", [train_args, study_args], ids=["crl.train", "crl.study"])
def test_both_command_lines_keep_freed_memory_unless_told_not_to(parse_args) -> None:
    assert ProcessSettings.from_args(parse_args(["file.yaml"])) == ProcessSettings(1, keep_freed_memory=True)
    told = parse_args(["file.yaml", "--no-keep-freed-memory", "--torch-threads", "3"])
    assert ProcessSettings.from_args(told) == ProcessSettings(3, keep_freed_memory=False)
