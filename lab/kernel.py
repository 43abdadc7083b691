"""Build the lab's guest kernel (``lab/guest/guest.S``) with the host's binutils.

Why built at run time: no binary goes into the repository, and ``as --32`` + ``ld -m elf_i386``
are in every binutils (gcc-multilib is not needed). The result is cached in the run dir under a
hash of the source, the linker script and the window, so both sides of a migration are handed
the very same file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from migcompat.lab._errors import LabError
from migcompat.lab.builds import run_dir

__all__ = ["DEFAULT_WINDOW_MB", "guest_kernel"]


def __dir__() -> list[str]:
    return list(__all__)


#: RAM window the guest dirties, in MiB (needs ``-m`` above its end; the lab uses 128M).
DEFAULT_WINDOW_MB: tuple[int, int] = (32, 64)


def guest_kernel(
    window_mb: tuple[int, int] = DEFAULT_WINDOW_MB, *, outdir: Path | None = None
) -> Path:
    """Path of the multiboot ELF in the run dir, building it if the cached one is stale.

    :raises LabError: ``as``/``ld`` missing or failing (their output is kept).
    """
    start, end = window_mb
    if not 2 <= start < end:
        raise LabError(f"bad guest RAM window {window_mb!r} (MiB, 2 <= start < end)")
    pkg = resources.files("migcompat.lab") / "guest"
    source = (pkg / "guest.S").read_bytes()
    script = (pkg / "guest.ld").read_bytes()
    digest = hashlib.sha256(source + b"\0" + script + f"\0{start}:{end}".encode()).hexdigest()
    target_dir = outdir or (run_dir() / "guest")
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"guest-{digest[:16]}.elf"
    if target.exists():
        return target
    for tool in ("as", "ld"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: install binutils to build the guest kernel")
    work = target_dir / f".build-{digest[:16]}-{os.getpid()}"  # two runs may build at once
    work.mkdir(exist_ok=True)
    (work / "guest.S").write_bytes(source)
    (work / "guest.ld").write_bytes(script)
    cmds = [
        ["as", "--32", "--defsym", f"WINDOW_START_MB={start}", "--defsym",
         f"WINDOW_END_MB={end}", "guest.S", "-o", "guest.o"],
        ["ld", "-m", "elf_i386", "--no-warn-rwx-segments", "-T", "guest.ld",
         "guest.o", "-o", "guest.elf"],
    ]  # fmt: skip
    for cmd in cmds:
        try:
            subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True, timeout=60)
        except subprocess.CalledProcessError as exc:
            if "--no-warn-rwx-segments" in cmd and "unrecognized option" in exc.stderr:
                cmd.remove("--no-warn-rwx-segments")  # binutils < 2.39
                subprocess.run(cmd, cwd=work, capture_output=True, check=True, timeout=60)
                continue
            raise LabError(
                f"building the guest kernel failed: {exc.stderr.strip()}", exc=exc
            ) from exc
        except (OSError, subprocess.SubprocessError) as exc:
            raise LabError("building the guest kernel failed", exc=exc) from exc
    (work / "guest.elf").replace(target)
    shutil.rmtree(work, ignore_errors=True)
    return target
