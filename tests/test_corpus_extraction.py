"""Tests for data/extract_janeausten.py (R lazy-load DB reader) and the committed corpus."""

from __future__ import annotations

import gzip
import importlib.util
import struct
import zlib
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).parents[1]
CORPUS = REPO_ROOT / "data" / "corpus"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("extract_janeausten", REPO_ROOT / "data" / "extract_janeausten.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extract = _load_script()

# --- minimal R XDR serializer (format version 3), enough for an rdx index and STRSXP payloads ---
HAS_ATTR, HAS_TAG = 1 << 9, 1 << 10
UTF8_LEVEL, ASCII_LEVEL = 1 << 3, 1 << 6


def _i(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def _charsxp(s: str | None) -> bytes:
    if s is None:
        return _i(9, -1)  # NA_STRING
    raw = s.encode("utf-8")
    level = ASCII_LEVEL if s.isascii() else UTF8_LEVEL
    return _i(9 | (level << 12), len(raw)) + raw


def _strsxp(items: list[str | None], attrs: bytes = b"") -> bytes:
    return _i(16 | (HAS_ATTR if attrs else 0), len(items)) + b"".join(map(_charsxp, items)) + attrs


def _names_attr(names: list[str]) -> bytes:
    # pairlist cell with tag = symbol "names", CAR = STRSXP, CDR = NULL (254)
    return _i(2 | HAS_TAG) + _i(1) + _charsxp("names") + _strsxp(names) + _i(254)


def _named_list(items: dict[str, bytes]) -> bytes:
    return _i(19 | HAS_ATTR, len(items)) + b"".join(items.values()) + _names_attr(list(items))


def _serialize(item: bytes) -> bytes:
    return b"X\n" + _i(3, 0x040201, 0x030500, 5) + b"UTF-8" + item


def _chunk(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + zlib.compress(payload)


def _write_db(tmp_path: Path, objects: dict[str, list[str | None]]) -> tuple[Path, Path]:
    rdb, variables = b"", {}
    for name, lines in objects.items():
        chunk = _chunk(_serialize(_strsxp(lines)))
        variables[name] = _i(13, 2, len(rdb), len(chunk))  # INTSXP c(offset, length)
        rdb += chunk
    index = _named_list(
        {
            "variables": _named_list(variables),
            "references": _i(254),  # NULL
            "compressed": _i(10, 1, 1),  # LGLSXP TRUE
        }
    )
    rdx_path, rdb_path = tmp_path / "Rdata.rdx", tmp_path / "Rdata.rdb"
    rdx_path.write_bytes(gzip.compress(_serialize(index), mtime=0))
    rdb_path.write_bytes(rdb)
    return rdx_path, rdb_path


def test_read_lazyload_db_roundtrip(tmp_path: Path) -> None:
    objects = {
        "novel": ["Chapter 1", "", "It is a truth universally acknowledged,", None, "her £20,000 — café ✓"],
        "empty": [],
        "other": ["x"] * 3,
    }
    rdx, rdb = _write_db(tmp_path, objects)
    assert extract.read_lazyload_db(rdx, rdb) == objects


def test_read_lazyload_db_zlib_chunk_index(tmp_path: Path) -> None:
    """The .rdx may also use the rdb chunk form (4-byte length + zlib) instead of gzip."""
    rdx, rdb = _write_db(tmp_path, {"a": ["é", None, ""]})
    rdx.write_bytes(_chunk(gzip.decompress(rdx.read_bytes())))
    assert extract.read_lazyload_db(rdx, rdb) == {"a": ["é", None, ""]}


def test_committed_persuasion_line_count() -> None:
    path = CORPUS / "persuasion.txt.gz"
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    assert len(text.split("\n")) == 8328
