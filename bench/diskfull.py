"""A disk that can be filled and freed again: the soak's "disk full" fault and its e2e test.

``LoopDisk`` mounts a fresh ext4 filesystem (a sparse image file on a loop device, as root)
so that filling it fills nothing else on a shared machine; ``fill`` writes a ballast file
beside the registry's tree until the filesystem has ``leave`` bytes free (0: full).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

BALLAST = "ballast"


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(mountpoint: Path, leave: int = 0) -> Path:
    """Allocate a ballast file until about ``leave`` bytes are free; with ``leave=0``,
    until the OS refuses one byte more. Returns the ballast's path (unlink it to free)."""
    ballast = mountpoint / BALLAST
    with ballast.open("ab", buffering=0) as f:
        todo = free_bytes(mountpoint) - leave
        if todo > 0:
            with contextlib.suppress(OSError):  # it may allocate less: what is left is filled
                os.posix_fallocate(f.fileno(), os.fstat(f.fileno()).st_size, todo)
        if leave == 0:
            with contextlib.suppress(OSError):
                while f.write(b"\0" * 4096):
                    pass
    return ballast


class LoopDisk:
    """An ext4 filesystem of ``size`` bytes (no blocks reserved for root, as the server
    runs as root here) mounted at ``mountpoint`` for as long as the object is open."""

    def __init__(self, image: Path, mountpoint: Path, size: int) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.size = size
        self.mounted = False

    @staticmethod
    def possible() -> bool:
        return os.geteuid() == 0 and all(
            Path(tool).exists() for tool in ("/usr/sbin/mkfs.ext4", "/usr/bin/mount")
        )

    def __enter__(self) -> LoopDisk:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.image.open("wb") as f:
            f.truncate(self.size)
        subprocess.run(["mkfs.ext4", "-q", "-m", "0", "-F", str(self.image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mountpoint)], check=True)
        self.mounted = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)
            self.mounted = False
        self.image.unlink(missing_ok=True)
