"""Drop DT_RUNPATH and DT_RPATH from ELF files in place, as `chrpath -d` does, with nothing but Python.

A CPython built under pyenv (this CI's) gives every extension module a
RUNPATH of the build machine's /root/.pyenv/versions/X/lib. In the frozen
tree that path is wrong and harmful: lintian's custom-library-search-path
error, and on a machine where the directory exists the loader would take
that Python's libraries instead of the tree's. The bootloader has loaded
the tree's libpython before any extension module, so none needs the path.

The entries are removed from the dynamic section and the section is
padded with DT_NULL, so no offset in the file moves. 64-bit little-endian
only (amd64, arm64); other files are left alone and named on stderr.

Usage: python3 drop_runpath.py FILE...   (prints the files it changed)
"""

from __future__ import annotations

import struct
import sys

PT_DYNAMIC = 2
DT_NULL, DT_RPATH, DT_RUNPATH = 0, 15, 29


def drop_runpath(path: str) -> bool:
    """True when the file had a RUNPATH or RPATH and now has none."""
    with open(path, "r+b") as elf:
        data = bytearray(elf.read())
        if data[:4] != b"\x7fELF":
            return False
        if data[4] != 2 or data[5] != 1:
            print(f"drop_runpath: {path}: not 64-bit little-endian ELF, left as it is", file=sys.stderr)
            return False
        phoff, = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        for index in range(phnum):
            p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
                "<IIQQQQ", data, phoff + index * phentsize)
            if p_type != PT_DYNAMIC:
                continue
            entries = [struct.unpack_from("<qQ", data, p_offset + at) for at in range(0, p_filesz, 16)]
            kept = [entry for entry in entries if entry[0] not in (DT_RPATH, DT_RUNPATH)]
            if len(kept) == len(entries):
                return False
            kept += [(DT_NULL, 0)] * (len(entries) - len(kept))
            data[p_offset:p_offset + 16 * len(kept)] = b"".join(struct.pack("<qQ", *entry) for entry in kept)
            elf.seek(0)
            elf.write(data)
            return True
    return False


if __name__ == "__main__":
    for name in sys.argv[1:]:
        if drop_runpath(name):
            print(name)
