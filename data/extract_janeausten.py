#!/usr/bin/env python3
"""Extract Jane Austen's six novels from the Debian package ``r-cran-janeaustenr``, without R.

The package stores its data sets as an R *lazy-load database*: a pair of files
``data/Rdata.rdx`` (the index) and ``data/Rdata.rdb`` (the payload).

``Rdata.rdx``
    One R-serialized object, compressed either as a gzip file (what ``saveRDS``
    writes, and what this package ships) or in the same "4-byte length + zlib"
    form as an ``.rdb`` chunk. The object is a named list (VECSXP with a
    ``names`` attribute) with entries ``variables``, ``references`` and
    ``compressed``. ``variables`` is itself a named list mapping each object
    name (``emma``, ``persuasion``, ...) to an integer vector ``c(offset, length)``
    that locates the object's chunk in the ``.rdb``.

``Rdata.rdb``
    A concatenation of chunks. Each chunk is a 4-byte big-endian length (the
    size of the *uncompressed* data) followed by a compressed stream. With
    ``compressed = TRUE`` (type 1) the stream is plain zlib; with type 2/3 a
    one-byte tag follows the length: ``'Z'`` xz, ``'2'`` bzip2, ``'1'`` zlib,
    ``'0'`` stored uncompressed.

Each decompressed payload is an R serialization stream in XDR (big-endian)
format: the header ``b"X\\n"``, three int32s (format version 2 or 3, writer's R
version, minimum reader version), and for version 3 the native encoding name
(int32 length + bytes). Then comes one item, written recursively: an int32 of
flags (``type = flags & 0xFF``, ``levels = flags >> 12``, bit 9 "has attributes",
bit 10 "has tag"), followed by type-specific data. This module reads only the
subset needed here: NULL, symbols and references to them, pairlists,
character (CHARSXP/STRSXP), logical, integer, real and generic vectors.

Each novel is a character vector with one element per printed line of the
Project Gutenberg text (blank elements separate paragraphs). ``main()`` writes
each one to ``data/corpus/<name>.txt.gz`` ("\\n"-joined, gzip with mtime=0 so
the output is byte-reproducible) and prints a JSON line of per-novel counts.

Usage::

    cd /tmp && apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr*.deb /tmp/ja
    python3 data/extract_janeausten.py /tmp/ja
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

NOVELS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")
DB_SUBDIR = Path("usr/lib/R/site-library/janeaustenr/data")

# SEXP type codes (R's Rinternals.h) and pseudo-types used only in serialization (serialize.c).
NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 0, 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP = 255, 254
NA_INTEGER = -(2**31)


class RList(list):
    """A decoded R vector/pairlist that keeps its R attributes (e.g. ``names``)."""

    attributes: dict[str, Any]

    def __init__(self, items: list[Any], attributes: dict[str, Any] | None = None) -> None:
        super().__init__(items)
        self.attributes = attributes or {}

    def as_dict(self) -> dict[str, Any]:
        """Pair elements with the ``names`` attribute."""
        return dict(zip(self.attributes["names"], self))


class XDRReader:
    """Reader for the subset of R's XDR serialization format used by data lazy-load DBs."""

    def __init__(self, data: bytes) -> None:
        self.buf, self.pos = data, 0
        self.refs: list[Any] = []  # reference table (symbols; environments are not supported)
        if self._take(2) != b"X\n":
            raise ValueError("not an R XDR serialization stream (expected header 'X\\n')")
        version, _writer, _min_reader = self._ints(3)
        if version == 3:
            self._take(self._int())  # native encoding name, e.g. b"UTF-8"
        elif version != 2:
            raise ValueError(f"unsupported serialization format version {version}")

    def _take(self, n: int) -> bytes:
        out = self.buf[self.pos : self.pos + n]
        if len(out) != n:
            raise ValueError("truncated R serialization stream")
        self.pos += n
        return out

    def _ints(self, n: int) -> tuple[int, ...]:
        return struct.unpack(f">{n}i", self._take(4 * n))

    def _int(self) -> int:
        return self._ints(1)[0]

    def _length(self) -> int:
        n = self._int()
        if n == -1:  # long vector: two int32s, upper then lower 32 bits
            hi, lo = struct.unpack(">II", self._take(8))
            n = (hi << 32) | lo
        return n

    def _attributes(self, has_attr: bool) -> dict[str, Any]:
        if not has_attr:
            return {}
        attrs = self.read_item()  # a pairlist decoded to RList with tag names
        return attrs.as_dict() if isinstance(attrs, RList) else {}

    def read_item(self) -> Any:
        flags = self._int()
        sxp, levels = flags & 0xFF, flags >> 12
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))

        if sxp == NILVALUE_SXP:
            return None
        if sxp == REFSXP:
            index = (flags >> 8) or self._int()  # index packed into the flags, else in the next int
            return self.refs[index - 1]
        if sxp == SYMSXP:
            name = self.read_item()  # the symbol's print name, a CHARSXP
            self.refs.append(name)
            return name
        if sxp == LISTSXP:  # pairlist: attributes, tag, CAR, then CDR (iterated, not recursed)
            items, tags = [], []
            while True:
                self._attributes(has_attr)
                tags.append(self.read_item() if has_tag else None)
                items.append(self.read_item())
                flags = self._int()
                if flags & 0xFF != LISTSXP:
                    self.pos -= 4
                    self.read_item()  # the terminating CDR, normally NULL
                    break
                has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
            return RList(items, {"names": tags})
        if sxp == CHARSXP:
            n = self._int()
            if n == -1:
                return None  # NA_character_
            raw = self._take(n)
            # levels: bit 2 LATIN1, bit 1 BYTES, bit 3 UTF8, bit 6 ASCII
            return raw.decode("latin-1") if levels & 4 else raw.decode("utf-8", errors="surrogateescape")
        if sxp in (LGLSXP, INTSXP):
            values = [None if v == NA_INTEGER else v for v in self._ints(self._length())]
        elif sxp == REALSXP:
            n = self._length()
            values = list(struct.unpack(f">{n}d", self._take(8 * n)))
        elif sxp in (STRSXP, VECSXP):
            values = [self.read_item() for _ in range(self._length())]
        elif sxp == NILSXP:
            return None
        else:
            raise NotImplementedError(f"R SEXP type {sxp} is not supported by this reader")
        return RList(values, self._attributes(has_attr))


def unserialize(data: bytes) -> Any:
    """Decode one R XDR serialization stream."""
    return XDRReader(data).read_item()


def decompress_chunk(chunk: bytes) -> bytes:
    """Decompress an rdb chunk: 4-byte big-endian uncompressed length + (tag byte +) stream."""
    (length,) = struct.unpack(">I", chunk[:4])
    body = chunk[4:]
    if body[:1] == b"x":  # zlib header (0x78): compression type 1, no tag byte
        out = zlib.decompress(body)
    else:
        tag, body = body[:1], body[1:]
        decoders = {b"Z": lzma.decompress, b"2": bz2.decompress, b"1": zlib.decompress, b"0": bytes}
        if tag not in decoders:
            raise ValueError(f"unknown lazy-load chunk compression tag {tag!r}")
        out = decoders[tag](body)
    if len(out) != length:
        raise ValueError(f"chunk decompressed to {len(out)} bytes, header says {length}")
    return out


def read_lazyload_db(rdx_path: str | Path, rdb_path: str | Path) -> dict[str, list[str]]:
    """Return every object of an R lazy-load database as ``{name: list of strings}``.

    Only character-vector objects are supported (NA elements come back as ``None``).
    """
    rdx_bytes = Path(rdx_path).read_bytes()
    raw_index = gzip.decompress(rdx_bytes) if rdx_bytes[:2] == b"\x1f\x8b" else decompress_chunk(rdx_bytes)
    variables = unserialize(raw_index).as_dict()["variables"].as_dict()
    rdb = Path(rdb_path).read_bytes()
    out: dict[str, list[str]] = {}
    for name, (offset, length) in variables.items():
        obj = unserialize(decompress_chunk(rdb[offset : offset + length]))
        if not isinstance(obj, RList) or not all(s is None or isinstance(s, str) for s in obj):
            raise TypeError(f"object {name!r} is not a character vector")
        out[name] = list(obj)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_root", nargs="?", default="/tmp/ja",
                        help="folder the .deb was extracted into with dpkg-deb -x (default: /tmp/ja)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "corpus"),
                        help="output folder (default: data/corpus next to this script)")
    args = parser.parse_args(argv)

    db = Path(args.package_root) / DB_SUBDIR
    objects = read_lazyload_db(db / "Rdata.rdx", db / "Rdata.rdb")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for name in NOVELS:
        lines = objects[name]
        if any(line is None for line in lines):
            raise ValueError(f"{name} contains NA lines")
        text = "\n".join(lines)
        with open(out_dir / f"{name}.txt.gz", "wb") as fh:
            # filename="" and mtime=0 keep the gzip header free of anything run-specific
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=9, mtime=0) as gz:
                gz.write(text.encode("utf-8"))
        counts[name] = {"lines": len(lines), "chars": len(text)}
    counts["total"] = {k: sum(c[k] for c in counts.values()) for k in ("lines", "chars")}
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
