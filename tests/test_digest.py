"""The weights digest: every realistic edit changes it, layout does not, and it is computed once per
weight version (see trt_runtime/digest.py)."""

from __future__ import annotations

import pytest
import torch

from trt_runtime import digest
from trt_runtime.keys import module_fingerprint

D = digest.tensor_digest


def _fresh(t: torch.Tensor) -> bytes:
    digest.forget()
    return D(t)


def _reference(t: torch.Tensor) -> bytes:
    """The documented algorithm in plain Python integers (slow, obviously right)."""
    import hashlib
    import struct

    mask = (1 << 64) - 1

    def odd(index: int, lane: int, salt: int) -> int:
        z = (index * 4 + lane * 2 + salt + digest._SEEDS[lane]) & mask
        z = (z * digest._GOLDEN + digest._GOLDEN) & mask
        z = ((z ^ (z >> 30)) * digest._MIX1) & mask
        z = ((z ^ (z >> 27)) * digest._MIX2) & mask
        return (z ^ (z >> 31)) | 1

    raw = t.contiguous().view(-1).view(torch.uint8).tolist()
    whole = len(raw) // 4 * 4
    words = struct.unpack(f"<{whole // 4}i", bytes(raw[:whole]))
    lanes = [sum(w * odd(p % digest._P, lane, 0) * odd(p // digest._P, lane, 1) for p, w in enumerate(words)) & mask
             for lane in (0, 1)]
    h = hashlib.sha256(f"{digest.ALGORITHM}|{t.dtype}|{tuple(t.shape)}|{len(raw)}|".encode())
    for lane in lanes:
        h.update(lane.to_bytes(8, "little"))
    h.update(bytes(raw[whole:]))
    return h.digest()


def test_matches_the_documented_algorithm_and_a_pinned_answer():
    torch.manual_seed(0)
    for t in (torch.arange(10, dtype=torch.float32), torch.randn(7).bfloat16(), torch.rand(5) > 0.5,
              torch.randn((1 << 16) + 5)):  # more than one block of P words, and a tail
        assert _fresh(t) == _reference(t)
    # pinned: a change here changes every cache key (bump digest.ALGORITHM if it is meant)
    assert D(torch.arange(10, dtype=torch.float32)).hex()[:16] == "55a0591b382507f0"


def test_the_gpu_code_path_gives_the_same_digest(monkeypatch):
    """GPUs lack int64 ``mv`` and multiply-then-sum instead: the same exact integers, so a module keys
    the same on either device. (CPU runs both paths here; the GPU run is in benchmarks/digest_throughput.py.)"""
    torch.manual_seed(0)
    tensors = [torch.randn((1 << 18) + 7), torch.randn(33).half(), torch.randn(64, 48).t()]
    on_cpu = [_fresh(t) for t in tensors]
    monkeypatch.setattr(digest, "_MV_DEVICES", set())
    assert [_fresh(t) for t in tensors] == on_cpu


def test_zeroing_weights_between_the_old_sample_points_changes_the_key():
    """The issue's case: the strided sample of a Linear(128, 128) saw every 4th element only."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 128)
    before = module_fingerprint(linear)["weights"]
    with torch.no_grad():
        flat = linear.weight.view(-1)
        keep = flat[::4].clone()
        flat.zero_()
        flat[::4] = keep
    assert module_fingerprint(linear)["weights"] != before


def test_every_single_row_edit_of_an_embedding_table_changes_the_digest():
    torch.manual_seed(0)
    table = torch.randn(1000, 64, dtype=torch.float16)
    seen = {_fresh(table)}
    for row in range(0, 1000, 7):
        edited = table.clone()
        edited[row, row % 64] += 0.5
        seen.add(_fresh(edited))
    assert len(seen) == 1 + len(range(0, 1000, 7))


def test_every_single_bit_flip_changes_the_digest_for_every_dtype():
    torch.manual_seed(0)
    for t in (torch.randn(13), torch.randn(11).half(), torch.randn(9).bfloat16(), torch.rand(37) > 0.5,
              torch.randint(-100, 100, (7,), dtype=torch.int8), torch.randint(-(2**40), 2**40, (5,))):
        raw = t.view(torch.uint8) if t.dtype != torch.bool else t.view(torch.uint8)
        base = _fresh(t)
        for byte in range(raw.numel()):
            for bit in (0, 7) if t.dtype != torch.bool else (0,):
                flipped = raw.clone()
                flipped[byte] ^= 1 << bit
                assert _fresh(flipped.view(t.dtype)) != base, (t.dtype, byte, bit)


def test_structured_edits_sign_flips_and_swaps_are_seen():
    torch.manual_seed(0)
    t = torch.randn(4096)
    base = _fresh(t)
    seen = {base}
    for i in range(0, 4000, 97):
        flipped = t.clone()
        flipped[i], flipped[i + 3] = -flipped[i], -flipped[i + 3]  # two sign bits: 2**31 apart each
        swapped = t.clone()
        swapped[i], swapped[i + 50] = t[i + 50], t[i]
        seen |= {_fresh(flipped), _fresh(swapped)}
    assert len(seen) == 1 + 2 * len(range(0, 4000, 97))


def test_dtype_and_shape_are_part_of_the_digest():
    t = torch.zeros(4, 4)
    assert len({_fresh(t), _fresh(t.view(16)), _fresh(t.view(torch.int32)), _fresh(torch.zeros(4, 4).double())}) == 4


def test_layout_does_not_matter_values_do():
    torch.manual_seed(0)
    a = torch.randn(64, 48)
    assert _fresh(a.t()) == _fresh(a.t().contiguous())
    big = torch.randn(70_000, 7, dtype=torch.float16)[:, 1:6]  # non-contiguous, odd row bytes, several pieces
    assert _fresh(big) == _fresh(big.contiguous())
    edited = big.clone()
    edited[-1, -1] += 1
    assert _fresh(edited) != _fresh(big)


def test_large_tensors_across_blocks_and_chunks():
    torch.manual_seed(0)
    t = torch.randn((1 << 20) + 3, dtype=torch.float16)  # several 64 Ki-word blocks, a partial one, a tail
    base = _fresh(t)
    for index in (0, 1 << 17, (1 << 20) - 1, (1 << 20) + 2):
        edited = t.clone()
        edited[index] = -edited[index] + 1
        assert _fresh(edited) != base
    misaligned = torch.randn(1001, dtype=torch.float16)[1:]  # storage offset of 2 bytes
    assert _fresh(misaligned) == _fresh(misaligned.clone())


def test_meta_empty_and_scalar_tensors():
    assert _fresh(torch.empty(3, 4, device="meta")) == _fresh(torch.empty(3, 4, device="meta"))
    assert _fresh(torch.empty(3, 4, device="meta")) != _fresh(torch.empty(4, 3, device="meta"))
    assert _fresh(torch.zeros(0)) != _fresh(torch.zeros(0, 2))
    assert _fresh(torch.tensor(1.0)) != _fresh(torch.tensor(2.0))
    module = torch.nn.Linear(4, 4, device="meta")
    assert module_fingerprint(module)["weights"].startswith(digest.ALGORITHM)


def test_computed_once_per_weight_version(monkeypatch):
    calls = []
    real = digest._compute
    monkeypatch.setattr(digest, "_compute", lambda t: calls.append(1) or real(t))
    linear = torch.nn.Linear(16, 16)
    digest.forget()
    first = module_fingerprint(linear)
    assert module_fingerprint(linear) == first and len(calls) == 2  # weight and bias, once each
    with torch.no_grad():
        linear.weight[3, 3] += 1  # in place: bumps the version counter
    changed = module_fingerprint(linear)
    assert changed["weights"] != first["weights"] and len(calls) == 3  # only the edited tensor again


def test_writes_through_data_need_forget():
    """``.data`` bypasses the version counter (peft's merge writes this way): ``forget`` is the remedy."""
    linear = torch.nn.Linear(8, 8)
    digest.forget()
    before = module_fingerprint(linear)["weights"]
    linear.weight.data.add_(1.0)
    assert module_fingerprint(linear)["weights"] == before  # documented limitation
    digest.forget(linear)
    assert module_fingerprint(linear)["weights"] != before


def test_replacing_a_parameter_or_its_data_changes_the_digest():
    linear = torch.nn.Linear(8, 8)
    before = module_fingerprint(linear)["weights"]
    linear.weight.data = torch.randn(8, 8)  # new storage: new data pointer
    assert module_fingerprint(linear)["weights"] != before
    linear.weight = torch.nn.Parameter(torch.randn(8, 8))
    assert module_fingerprint(linear)["weights"] != before


@pytest.mark.filterwarnings("ignore:.*quantize_per_tensor")
def test_quantized_and_sparse_tensors():
    t = torch.quantize_per_tensor(torch.randn(16), 0.1, 3, torch.qint8)
    other = torch.quantize_per_tensor(t.dequantize(), 0.2, 3, torch.qint8)
    assert _fresh(t) != _fresh(other)
    sparse = torch.randn(8, 8).to_sparse()
    assert _fresh(sparse) == _fresh(sparse.clone()) and _fresh(sparse) != _fresh((sparse * 2).coalesce())
