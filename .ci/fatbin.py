"""Lists the device code in a shared library's .nv_fatbin section, without cuobjdump.

    python .ci/fatbin.py path/to/_C.abi3.so

The section holds one fat binary container per CUDA translation unit. A container is a 16-byte
header (magic 0xBA55ED50, u16 version, u16 header size, u64 size of the entries) followed by
entries, each a header (u16 kind: 1 = PTX, 2 = ELF cubin; u32 header size at byte 4; u64
payload size at byte 8; u32 SM architecture at byte 28) and its payload. Layout as documented by
reverse-engineered fatbin tools (e.g. GrigoryEvko/nvopen-tools fatbin/FORMAT_SPECIFICATION.md)
and checked against nvcc 13's output.
"""

import struct
import sys
from typing import NamedTuple

FATBIN_MAGIC = 0xBA55ED50
KINDS = {1: "PTX", 2: "ELF"}


class Entry(NamedTuple):
    container: int  # index of the container (one per .cu file)
    kind: str  # "PTX" or "ELF"
    arch: int  # 90 for sm_90 / compute_90


def _sections(data):
    """{name: bytes} of a little-endian ELF64 file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(index):  # (name offset, offset, size)
        fields = struct.unpack_from("<IIQQQQ", data, shoff + index * shentsize)
        return fields[0], fields[4], fields[5]

    _, names_offset, _ = header(shstrndx)
    sections = {}
    for index in range(shnum):
        name, offset, size = header(index)
        start = names_offset + name
        sections[data[start : data.index(b"\0", start)].decode()] = data[offset : offset + size]
    return sections


def device_code(path):
    """The entries of every fat binary container in the library at `path`."""
    with open(path, "rb") as file:
        section = _sections(file.read()).get(".nv_fatbin", b"")
    entries, position, container = [], 0, 0
    while position + 16 <= len(section):
        magic, _, header_size, size = struct.unpack_from("<IHHQ", section, position)
        if magic != FATBIN_MAGIC:  # padding between containers
            position += 8
            continue
        entry, end = position + header_size, position + header_size + size
        while entry < end:
            kind, _, entry_header_size, payload_size = struct.unpack_from("<HHIQ", section, entry)
            (arch,) = struct.unpack_from("<I", section, entry + 28)
            entries.append(Entry(container, KINDS.get(kind, f"kind {kind}"), arch))
            entry += entry_header_size + payload_size
        position, container = end, container + 1
    return entries


def describe(entries):
    """E.g. "2 containers: sm_80, sm_90 cubins; compute_90 PTX"."""
    cubins = sorted({e.arch for e in entries if e.kind == "ELF"})
    ptx = sorted({e.arch for e in entries if e.kind == "PTX"})
    containers = len({e.container for e in entries})
    return (
        f"{containers} containers: {', '.join(f'sm_{a}' for a in cubins) or 'no'} cubins; "
        f"{', '.join(f'compute_{a}' for a in ptx) or 'no'} PTX"
    )


if __name__ == "__main__":
    found = device_code(sys.argv[1])
    for item in found:
        print(f"container {item.container}: {item.kind} {item.arch}")
    print(describe(found))
