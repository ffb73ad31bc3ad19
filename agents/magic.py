"""What type a file is: magic-byte signatures, the text test, and whether the extension agrees.

Pure functions on the first (and last) bytes of a file; ``agents.content`` samples the files and
``agents.inventory`` walks datasets with them. Text is told from binary by the share of bytes
that belong to text, counted in C by ``bytes.translate`` (no per-byte Python).
"""
from __future__ import annotations

import os

TEXT_RATIO = 0.95  # a head this much text (and without NUL) is "text"
# ASCII printable and the whitespace that text holds (tab, newline, carriage return).
_PRINTABLE = bytes([9, 10, 13, *range(32, 127)])
_HIGH = bytes(range(128, 256))


def is_utf8(data: bytes) -> bool:
    """Valid UTF-8, allowing a sample to cut a multi-byte character at either end (3 bytes of slack)."""
    for cut in range(4):
        try:
            data[cut : len(data) - (3 - cut) if cut < 3 else len(data)].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def text_bytes(data: bytes, utf8: bool | None = None) -> int:
    """How many bytes of ``data`` belong to text: ASCII printable and whitespace, plus the bytes of
    multi-byte characters when the data is valid UTF-8 (``utf8`` when the caller already knows)."""
    n = len(data)
    good = n - len(data.translate(None, _PRINTABLE))
    if not data.isascii():
        if utf8 is None:
            utf8 = is_utf8(data)
        if utf8:
            good += n - len(data.translate(None, _HIGH))
    return good


def printable_ratio(data: bytes) -> float:
    """Share of bytes that belong to text (1.0 for empty input): see ``text_bytes``."""
    return text_bytes(data) / len(data) if data else 1.0


_ZIP_KINDS = ((b"word/", "docx"), (b"xl/", "xlsx"), (b"ppt/", "pptx"))


def _zip_kind(head: bytes) -> str:
    # The first local file header's name (offset 30, length at 26) tells OOXML, ODF and NPZ apart;
    # OOXML writers put [Content_Types].xml or the part folders first.
    if len(head) >= 30:
        name_len = int.from_bytes(head[26:28], "little")
        name = head[30 : 30 + name_len]
        if name == b"mimetype" and b"opendocument" in head[:200]:
            return "odf"
        if name.endswith(b".npy"):
            return "npz"
    window = head[:4096]
    for marker, kind in _ZIP_KINDS:
        if b"PK\x03\x04" in window and marker in window:
            return kind
    if b"[Content_Types].xml" in window:
        return "ooxml"
    return "zip"


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "pdf"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"\x1f\x8b", "gzip"),
    (b"PAR1", "parquet"),
    (b"\x93NUMPY", "npy"),
    (b"\x7fELF", "elf"),
    (b"SQLite format 3\x00", "sqlite"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole2"),
    (b"\x89HDF\r\n\x1a\n", "hdf5"),
    (b"ARROW1", "arrow"),
    (b"Obj\x01", "avro"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"-----BEGIN PGP", "pgp"),
    (b"age-encryption.org/", "age"),
    (b"MZ", "pe"),
)
# The signatures by first byte: one dict lookup instead of two dozen startswith per file.
_BY_FIRST: dict[int, tuple[tuple[bytes, str], ...]] = {}
for _sig, _kind in _MAGIC:
    _BY_FIRST[_sig[0]] = (*_BY_FIRST.get(_sig[0], ()), (_sig, _kind))


def signature_type(head: bytes, tail: bytes = b"") -> str | None:
    """The type that a signature in the first bytes proves, or None (text or unknown)."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return _zip_kind(head)
    for magic, kind in _BY_FIRST.get(head[0], ()):
        if head.startswith(magic):
            return kind
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 2 and head[0] == 0x78 and head[1] in (0x01, 0x5E, 0x9C, 0xDA):
        return "zlib"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and tail.endswith(b"."):
        return "pickle"
    if len(head) >= 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    return None


def magic_type(head: bytes, tail: bytes = b"", size: int | None = None) -> str:
    """The file type from its first bytes ("pdf", "zip", "docx", "png", "text", ...),
    "empty" for an empty file and "unknown" when nothing matches."""
    if not head:
        return "empty" if not size else "unknown"
    kind = signature_type(head, tail)
    if kind is not None:
        return kind
    if b"\x00" not in head and printable_ratio(head) >= TEXT_RATIO:
        return "text"
    return "unknown"


_TEXT = frozenset({"text"})
_ZIPS = frozenset({"zip", "docx", "xlsx", "pptx", "ooxml", "odf", "npz"})
EXPECTED: dict[str, frozenset[str]] = {
    ".pdf": frozenset({"pdf"}),
    ".docx": frozenset({"docx", "ooxml", "zip"}), ".docm": frozenset({"docx", "ooxml", "zip"}),
    ".xlsx": frozenset({"xlsx", "ooxml", "zip"}), ".xlsm": frozenset({"xlsx", "ooxml", "zip"}),
    ".pptx": frozenset({"pptx", "ooxml", "zip"}),
    ".odt": frozenset({"odf", "zip"}), ".ods": frozenset({"odf", "zip"}), ".odp": frozenset({"odf", "zip"}),
    ".zip": _ZIPS, ".jar": _ZIPS, ".whl": _ZIPS,
    ".npz": frozenset({"npz", "zip"}), ".npy": frozenset({"npy"}),
    ".pt": frozenset({"zip", "pickle"}), ".pth": frozenset({"zip", "pickle"}),
    ".pkl": frozenset({"pickle"}), ".pickle": frozenset({"pickle"}),
    ".png": frozenset({"png"}), ".jpg": frozenset({"jpeg"}), ".jpeg": frozenset({"jpeg"}),
    ".gif": frozenset({"gif"}), ".tif": frozenset({"tiff"}), ".tiff": frozenset({"tiff"}),
    ".webp": frozenset({"webp"}), ".mp4": frozenset({"mp4"}), ".mov": frozenset({"mp4"}),
    ".gz": frozenset({"gzip"}), ".tgz": frozenset({"gzip"}), ".bz2": frozenset({"bzip2"}),
    ".xz": frozenset({"xz"}), ".zst": frozenset({"zstd"}), ".7z": frozenset({"7z"}), ".rar": frozenset({"rar"}),
    ".parquet": frozenset({"parquet"}), ".arrow": frozenset({"arrow"}), ".feather": frozenset({"arrow"}),
    ".avro": frozenset({"avro"}), ".h5": frozenset({"hdf5"}), ".hdf5": frozenset({"hdf5"}),
    ".safetensors": frozenset({"safetensors"}),
    ".sqlite": frozenset({"sqlite"}), ".sqlite3": frozenset({"sqlite"}), ".db": frozenset({"sqlite"}),
    ".doc": frozenset({"ole2"}), ".xls": frozenset({"ole2"}), ".ppt": frozenset({"ole2"}),
    ".so": frozenset({"elf"}), ".exe": frozenset({"pe"}), ".dll": frozenset({"pe"}),
    **{ext: _TEXT for ext in (".txt", ".csv", ".tsv", ".json", ".jsonl", ".md", ".py", ".yaml", ".yml",
                              ".xml", ".html", ".htm", ".log", ".ini", ".cfg", ".conf", ".sh", ".sql",
                              ".rst", ".toml", ".js", ".ts", ".c", ".h", ".java", ".go", ".rs", ".r",
                              ".ipynb", ".tex", ".svg")},
}


def ext_mismatch(name: str, kind: str) -> bool | None:
    """True when the type from magic bytes disagrees with the extension; None when the extension
    is not one we know or the file is empty."""
    if kind == "empty":
        return None
    expected = EXPECTED.get(os.path.splitext(name)[1].lower())
    if expected is None:
        return None
    return kind not in expected
