"""How much memory this process may still use, so that a file too large for it fails with advice, not the OOM killer."""

from __future__ import annotations

from pathlib import Path


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" when there is no limit


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory_bytes() -> int | None:
    """Bytes available now: the smaller of the machine's available memory and what the container's cgroup limit
    leaves (in a container /proc/meminfo shows the host, whose memory the job may never get). None if unknown."""
    try:
        import psutil

        candidates = [int(psutil.virtual_memory().available)]
    except ImportError:
        candidates = [_meminfo_available()]
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 reports "no limit" as ~2**63
            candidates.append(max(limit - usage, 0))
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def release_free_memory() -> None:
    """Hand memory freed by the last pass back to the OS (glibc ``malloc_trim``; nothing elsewhere).

    A pass over a chunked matrix frees ~100 MB of chunk temporaries per chunk; glibc keeps much of it in its heap,
    where it still counts as resident, so each pass would start from the last one's high-water mark."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): their allocators return memory themselves
        pass
