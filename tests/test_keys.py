"""Cache keys: equal when an artifact may be shared, different whenever it may not."""

from __future__ import annotations

import enum

import pytest
import torch

from trt_runtime import Dim, UnkeyableInputError
from trt_runtime.keys import cache_key, canonical_json, module_fingerprint, signature
from trt_runtime.shapes import normalize_spec


def mlp(seed: int = 0, hidden: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 4))


def test_signature_depends_on_shape_dtype_device_not_values():
    a, b = torch.randn(2, 8), torch.randn(2, 8)
    assert signature((a,), {}) == signature((b,), {})
    assert signature((a,), {}) != signature((torch.randn(3, 8),), {})
    assert signature((a,), {}) != signature((a.half(),), {})
    assert signature((a,), {}) != signature((), {"x": a})  # positional and keyword calls differ


def test_signature_keys_plain_values_by_value_and_type():
    x = torch.zeros(1)
    base = signature((x,), {"flag": True, "scale": 1.0, "mode": "a", "n": None})
    assert base == signature((x,), {"n": None, "mode": "a", "scale": 1.0, "flag": True})  # order-free
    assert base != signature((x,), {"flag": False, "scale": 1.0, "mode": "a", "n": None})
    assert base != signature((x,), {"flag": True, "scale": 0.5, "mode": "a", "n": None})
    assert base != signature((x,), {"flag": True, "scale": 1.0, "mode": "b", "n": None})
    # 1 and 1.0 and True are different arguments to a module; keys must not merge them
    assert signature((1,), {}) != signature((1.0,), {}) != signature((True,), {})


def test_signature_walks_nested_containers():
    t = torch.zeros(2, 3)
    nested = {"added_cond_kwargs": {"text_embeds": t, "time_ids": torch.zeros(2, 6)}, "res": [t, t]}
    same = {"res": [torch.ones(2, 3), t], "added_cond_kwargs": {"time_ids": torch.ones(2, 6), "text_embeds": t}}
    assert signature((), nested) == signature((), same)
    longer = {**nested, "res": [t, t, t]}
    assert signature((), nested) != signature((), longer)
    as_tuple = {**nested, "res": (t, t)}
    assert signature((), nested) != signature((), as_tuple)
    inner_shape = {**nested, "added_cond_kwargs": {"text_embeds": torch.zeros(2, 4), "time_ids": torch.zeros(2, 6)}}
    assert signature((), nested) != signature((), inner_shape)


def test_signature_rejects_values_without_identity():
    with pytest.raises(UnkeyableInputError, match="cannot be part of a cache key") as info:
        signature((object(),), {})
    assert isinstance(info.value, TypeError)


def test_enums_and_dtypes_are_keyable():
    class Mode(enum.Enum):
        A = 1
        B = 2

    assert signature((Mode.A,), {}) != signature((Mode.B,), {})
    assert signature((torch.float16,), {}) != signature((torch.float32,), {})


def test_declared_range_shares_one_signature_and_exact_outside():
    spec = normalize_spec({"sample": {0: Dim("batch", 1, 4)}})
    names = ("sample",)
    s2 = signature((torch.zeros(2, 8),), {}, names, spec)
    s4 = signature((torch.zeros(4, 8),), {}, names, spec)
    s8 = signature((torch.zeros(8, 8),), {}, names, spec)
    assert s2 == s4
    assert s8 != s2  # outside the range: its own key
    assert signature((torch.zeros(2, 9),), {}, names, spec) != s2  # undeclared dim stays exact


def test_spec_rejects_conflicting_dims_and_bad_ranges():
    from trt_runtime import ConfigurationError

    with pytest.raises(ConfigurationError):
        Dim("batch", 4, 2)
    with pytest.raises(ConfigurationError, match="declared twice"):
        normalize_spec({"a": {0: Dim("b", 1, 4)}, "c": {0: Dim("b", 1, 8)}})
    assert normalize_spec({"a": {0: (1, 4)}})["a"][0] == Dim("a_0", 1, 4)


def test_fingerprint_changes_with_weights_config_and_dtype():
    base = module_fingerprint(mlp(0))
    assert base == module_fingerprint(mlp(0))
    assert base["weights"] != module_fingerprint(mlp(1))["weights"]
    assert base["layout"] != module_fingerprint(mlp(0, hidden=32))["layout"]
    assert base != module_fingerprint(mlp(0).half())
    changed = mlp(0)
    with torch.no_grad():
        changed[2].weight[-1, -1] += 1.0  # one element, the last one: the sample must still see it
    assert module_fingerprint(changed, "full")["weights"] != module_fingerprint(mlp(0), "full")["weights"]
    assert module_fingerprint(changed)["weights"] != base["weights"]


def test_fingerprint_includes_diffusers_config_without_volatile_fields():
    from diffusers import AutoencoderKL

    def vae(scaling: float) -> AutoencoderKL:
        torch.manual_seed(0)
        return AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4,
                             down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                             scaling_factor=scaling)

    a, b = vae(0.18215), vae(0.13025)
    assert module_fingerprint(a)["weights"] == module_fingerprint(b)["weights"]
    assert module_fingerprint(a)["config"] != module_fingerprint(b)["config"]
    a.register_to_config(_name_or_path="/somewhere/else")
    assert module_fingerprint(a) == module_fingerprint(vae(0.18215))


def test_cache_key_is_canonical():
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": (1, 2), "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})
    assert canonical_json({"x": float("nan"), "d": torch.float16}) == '{"d":"torch.float16","x":"nan"}'
    assert len(cache_key({})) == 40


def test_a_cpu_artifacts_key_names_the_cpus_vector_features(monkeypatch):
    """A CPU entry holds C++ kernels and inductor's ISA probes compiled for this CPU's vector instructions: another
    CPU (AVX2 only against AVX-512, say) gets another key, never those files."""
    from trt_runtime import keys

    here = keys.environment(None)
    assert here["cpu_features"] == keys.cpu_features() and here["cpu_features"]
    monkeypatch.setattr(keys, "cpu_features", lambda: "sse2-only (a test)")
    other = keys.environment(None)
    assert other["cpu_features"] == "sse2-only (a test)"
    assert keys.cache_key({"env": here}) != keys.cache_key({"env": other})


@pytest.mark.parametrize("cpuinfo, features", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c bmi2\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma f16c\n",
     "avx avx2 fma f16c"),
    ("flags\t\t: sse2 avx avx2 fma avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16 amx_tile\n",
     "avx avx2 fma avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16 amx_tile"),
    ("processor\t: 0\nFeatures\t: fp asimd evtstrm sve sve2 bf16\n", "asimd sve sve2"),
    ("flags\t\t: fpu sse sse2\n", "none"),
    ("flags\t\t: avx512f\n", "avx512f"),  # whole names: avx512f is not avx
])
def test_a_cpus_vector_features_are_read_from_its_cpuinfo(cpuinfo, features):
    from trt_runtime import keys

    assert keys.cpu_features(cpuinfo) == features


def test_a_cpu_without_a_flags_line_is_named_by_its_model(monkeypatch):
    import platform

    from trt_runtime import keys

    monkeypatch.setattr(platform, "processor", lambda: "this machine's processor (must not be used)")
    assert keys.cpu_features("processor\t: 0\nmodel name\t: Some CPU\n") == "Some CPU"
    assert keys.cpu_features("processor\t: 0\n") == "unknown"
    assert keys.cpu_features("features\t: esan3 zarch stfle msa vx vxe\n") == "none"  # s390x: lowercase, no SIMD of ours
