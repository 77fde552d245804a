"""A digest of a module's weights that no realistic edit collides with, cheap enough for 12 B parameters.

The cache key must change whenever an engine that embeds the weights would compute something else.
A strided sample cannot promise that (a LoRA delta or one edited embedding row slips between sample
points), and sha256 of every byte on the host costs a device-to-host copy plus ~0.3-2 GB/s per core. So
every byte is digested where the tensor lives, with torch integer ops:

- the tensor's bytes are read as little-endian int32 words ``w_p`` (``p`` the word's position);
- two lanes ``l`` each compute ``H_l = sum_p w_p * M_l[p mod P] * R_l[p div P]  (mod 2**64)`` in wrapping
  int64 arithmetic, where ``M_l`` (a table of ``P = 65536`` entries) and ``R_l`` (one per block of ``P``
  words) are odd pseudo-random constants from splitmix64 -- the same everywhere, so CPU and GPU agree;
- ``sha256(dtype, shape, byte count, H_0, H_1, the 0-3 trailing bytes)`` on the host is the tensor's
  digest, and sha256 over (name, tensor digest) pairs is the module's.

Why this is sound: a word differs by ``d`` with ``0 < |d| < 2**32``; its multiplier is odd, so ``d * m``
is not 0 modulo ``2**64``: every single-word edit changes both lanes, always. Edits of several words
collide only if their weighted sum vanishes modulo ``2**64`` in both independent lanes: about ``2**-128``
for unstructured edits and no worse than ``2**-64`` for the most structured ones (sign flips of two
values, whose differences share 31 factors of two). It is not a cryptographic MAC: someone who wants
two weight sets with one key can construct them, but they only fool their own cache.

Cost: one int32-to-int64 copy plus, per lane, one multiply and one sum over the weights, in chunks of
at most ``4M`` words (temporary memory ~64 MB on a GPU, 4 MB on a CPU). Results are remembered per tensor
object and its (data pointer, storage offset, shape, strides, dtype, device, version counter), so a
weight is digested once per version. ``tensor.data`` writes do not bump the version counter (that is
what ``.data`` is for); after such an edit (peft's merge does it) call ``forget(module)``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable

import torch

__all__ = ["ALGORITHM", "tensor_digest", "weights_digest", "forget"]

ALGORITHM = "lanes64x2-v1"
"""Recorded in the fingerprint: a different algorithm gives different keys, never a false match."""

_P = 1 << 16
_CHUNK_WORDS = {"cpu": 1 << 20}
_MV_DEVICES = {"cpu"}
"""Devices with an int64 matrix-vector product (fused multiply-and-sum); others multiply, then sum."""
_DEFAULT_CHUNK_WORDS = 1 << 22
_SEEDS = (0x243F6A8885A308D3, 0x13198A2E03707344)
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MASK = (1 << 64) - 1

_tables: dict[str, torch.Tensor] = {}
_memo = None
_lock = threading.Lock()


def _signed(value: int) -> int:
    value &= _MASK
    return value - (1 << 64) if value >> 63 else value


def _splitmix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 of int64 tensor ``x`` (wrapping arithmetic; logical shifts by masking)."""
    def shr(z: torch.Tensor, s: int) -> torch.Tensor:
        return torch.bitwise_and(torch.bitwise_right_shift(z, s), (1 << (64 - s)) - 1)

    z = x * _signed(_GOLDEN) + _signed(_GOLDEN)
    z = torch.bitwise_xor(z, shr(z, 30)) * _signed(_MIX1)
    z = torch.bitwise_xor(z, shr(z, 27)) * _signed(_MIX2)
    return torch.bitwise_xor(z, shr(z, 31))


def _odd_constants(indices: torch.Tensor, lane: int, salt: int) -> torch.Tensor:
    return torch.bitwise_or(_splitmix(indices * 4 + (lane * 2 + salt) + _signed(_SEEDS[lane])), 1)


def _table(device: torch.device) -> torch.Tensor:
    """The per-position multipliers ``M`` ([2, P] int64) on ``device``, built once per device."""
    return _constants(device, "M", _P, 0)


def _constants(device: torch.device, name: str, count: int, salt: int) -> torch.Tensor:
    """Odd constants [2, >= count] for ``device``, built once and grown by doubling."""
    tag = (str(device), name)
    table = _tables.get(tag)
    if table is None or table.shape[1] < count:
        size = max(count, 2 * (table.shape[1] if table is not None else 1024))
        index = torch.arange(size, dtype=torch.int64)
        table = torch.stack([_odd_constants(index, lane, salt) for lane in (0, 1)]).to(device)
        _tables[tag] = table
    return table


class _Lanes:
    """Streaming state of the two lanes for one tensor (words may arrive in several pieces).

    Per block of ``P`` words and lane it keeps ``sum_i w_i * M[i]`` (a matrix-vector product on the CPU,
    multiply-and-sum on other devices, where int64 ``mv`` is missing: the same exact integers); ``finish``
    weighs the block sums with ``R`` and adds them up."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.table = _table(device)
        self.sums: list[torch.Tensor] = []
        self.carry: torch.Tensor | None = None
        self.chunk_rows = max(1, _CHUNK_WORDS.get(device.type, _DEFAULT_CHUNK_WORDS) // _P)
        self.buffer: torch.Tensor | None = None

    def update(self, words: torch.Tensor) -> None:
        if self.carry is not None:
            words = torch.cat([self.carry, words.to(torch.int64)])
            self.carry = None
        rows = words.numel() // _P
        for start in range(0, rows, self.chunk_rows):
            count = min(self.chunk_rows, rows - start)
            if self.buffer is None:
                self.buffer = torch.empty(self.chunk_rows, _P, dtype=torch.int64, device=self.device)
            block = self.buffer[:count]
            block.copy_(words[start * _P:(start + count) * _P].view(count, _P))
            self._add(block)
        if words.numel() > rows * _P:
            self.carry = words[rows * _P:].to(torch.int64)

    def _add(self, block: torch.Tensor) -> None:
        table = self.table[:, :block.shape[-1]]
        if self.device.type in _MV_DEVICES:
            self.sums.append(torch.stack([torch.mv(block, table[0]), torch.mv(block, table[1])]))
        else:
            self.sums.append(torch.stack([(block * table[0]).sum(dim=-1), (block * table[1]).sum(dim=-1)]))

    def finish(self) -> tuple[int, int]:
        if self.carry is not None:
            self._add(self.carry.view(1, -1))
        if not self.sums:
            return 0, 0
        sums = torch.cat(self.sums, dim=1)
        weights = _constants(self.device, "R", sums.shape[1], 1)[:, :sums.shape[1]]
        lane0, lane1 = (sums * weights).sum(dim=1).tolist()
        return lane0, lane1


def _tensor_bytes_digest(t: torch.Tensor) -> bytes:
    """The digest of a plain strided tensor's values (logical order; layout does not matter)."""
    h = hashlib.sha256(f"{ALGORITHM}|{t.dtype}|{tuple(t.shape)}|{t.numel() * t.element_size()}|".encode())
    if t.device.type == "meta":
        h.update(b"meta: no values")
        return h.digest()
    lanes = _Lanes(t.device)
    tail = b""
    for piece in _contiguous_pieces(t):
        raw = piece.reshape(-1).view(torch.uint8)
        whole = raw.numel() // 4 * 4
        if whole:
            try:
                words = raw[:whole].view(torch.int32)
            except RuntimeError:  # storage offset not 4-byte aligned: an aligned copy
                words = raw[:whole].clone().view(torch.int32)
            lanes.update(words)
        tail = bytes(raw[whole:].cpu().tolist())
    for lane in lanes.finish():
        h.update(lane.to_bytes(8, "little", signed=True))
    h.update(tail)
    return h.digest()


def _contiguous_pieces(t: torch.Tensor):
    """``t`` as contiguous pieces in logical order, each a whole number of 4-byte words except the
    last: a contiguous tensor is one piece; otherwise blocks of rows, copied one at a time."""
    if t.is_contiguous() or t.dim() == 0:
        yield t.contiguous()
        return
    row_bytes = max(1, t[0].numel() * t.element_size()) if t.shape[0] else 1
    rows = max(4, (_CHUNK_WORDS.get(t.device.type, _DEFAULT_CHUNK_WORDS) * 4 // row_bytes) // 4 * 4)
    for start in range(0, t.shape[0], rows):
        yield t[start:start + rows].contiguous()


def _parts(t: torch.Tensor) -> list[tuple[str, torch.Tensor]] | None:
    """How to digest tensors that are not plain strided tensors (None: a plain one)."""
    if t.is_quantized:
        parts = [("int_repr", t.int_repr())]
        if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            parts.append(("qparams", torch.tensor([t.q_scale()], dtype=torch.float64)))
            parts.append(("zero", torch.tensor([t.q_zero_point()], dtype=torch.int64)))
        else:
            parts += [("scales", t.q_per_channel_scales()), ("zeros", t.q_per_channel_zero_points()),
                      ("axis", torch.tensor([t.q_per_channel_axis()]))]
        return parts
    if t.is_sparse:
        t = t.coalesce()
        return [("indices", t.indices()), ("values", t.values())]
    if t.layout != torch.strided:
        return [("dense", t.to_dense())]
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, ctx = t.__tensor_flatten__()
        return [(f"ctx:{type(t).__qualname__}:{ctx!r}", torch.empty(0))] + [(n, getattr(t, n)) for n in names]
    return None


def _compute(t: torch.Tensor) -> bytes:
    t = t.detach()
    parts = _parts(t)
    if parts is None:
        return _tensor_bytes_digest(t)
    h = hashlib.sha256(f"{ALGORITHM}|{type(t).__qualname__}|{t.dtype}|{tuple(t.shape)}|".encode())
    for name, part in parts:
        h.update(name.encode() + b"\0" + _compute(part))
    return h.digest()


def _state(t: torch.Tensor) -> tuple | None:
    try:
        return (t.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, str(t.device), t._version)
    except (RuntimeError, NotImplementedError):
        return None  # tensor subclasses without storage: digest every time


def _memo_table():
    global _memo
    if _memo is None:
        from torch.utils.weak import WeakIdKeyDictionary

        _memo = WeakIdKeyDictionary()
    return _memo


def tensor_digest(t: torch.Tensor) -> bytes:
    """32-byte digest of ``t``'s dtype, shape and every value; remembered per weight version."""
    state = _state(t)
    with _lock:
        hit = _memo_table().get(t) if state is not None else None
    if hit is not None and hit[0] == state:
        return hit[1]
    with torch.no_grad():
        value = _compute(t)
    if state is not None:
        with _lock:
            _memo_table()[t] = (state, value)
    return value


def weights_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hex digest of (name, values) of every tensor, in the order given."""
    h = hashlib.sha256(ALGORITHM.encode())
    for name, tensor in named_tensors:
        h.update(name.encode() + b"\0" + tensor_digest(tensor))
    return h.hexdigest()


def forget(module: torch.nn.Module | None = None) -> None:
    """Drop remembered digests (of ``module``'s tensors, or all), so the next digest re-reads them.
    Needed after writes that bypass the version counter (``param.data.add_()``, ``param.data = ...``
    when the new storage reuses an address)."""
    with _lock:
        memo = _memo_table()
        if module is None:
            memo.clear()
            return
        for tensor in (*module.parameters(), *module.buffers()):
            memo.pop(tensor, None)
