"""Text encoder wrapper: the same ModelOutput class and fields, hidden states, pooled outputs, int ids."""

from __future__ import annotations

import pytest
import torch

from trt_runtime import ConfigurationError
from trt_runtime.modules import text_encoders
from trt_runtime.modules.text_encoders import apply_text_encoder, is_supported_text_encoder

from ..support import tiny_models as tm

ENCODERS = {
    "clip": tm.clip_text_encoder,
    "clip_projection": lambda: tm.clip_text_encoder(projection=True),
    "t5": tm.t5_encoder,
    "llama": tm.llama_encoder,
}


def _ids(batch: int = 2, length: int = 16, vocab: int = 60):
    ids = torch.randint(2, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    ids[:, -3:] = 1  # CLIP's end-of-text id: the pooled output is read at its position
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[-1, -4:] = 0
    return ids, mask


def _assert_same_output(out, want):
    assert type(out) is type(want)
    assert list(out.keys()) == list(want.keys())
    for key in want.keys():
        got, expected = out[key], want[key]
        if isinstance(expected, tuple):
            assert isinstance(got, tuple) and len(got) == len(expected)
            for a, b in zip(got, expected, strict=True):
                torch.testing.assert_close(a, b)
        else:
            torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_outputs_fields_and_hidden_states(runtime, kind):
    model = ENCODERS[kind]()
    ids, mask = _ids()
    no_cache = {"use_cache": False} if kind == "llama" else {}  # a wrapped encoder pass returns no cache
    want_hidden = model(ids, attention_mask=mask, output_hidden_states=True, **no_cache)
    want_plain = model(ids, attention_mask=mask, **no_cache)
    want_tuple = model(ids, attention_mask=mask, return_dict=False, **no_cache)
    apply_text_encoder(model, runtime=runtime, name=kind)

    out = model(ids, attention_mask=mask, output_hidden_states=True)
    _assert_same_output(out, want_hidden)
    _assert_same_output(model(ids, attention_mask=mask), want_plain)
    as_tuple = model(ids, attention_mask=mask, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(want_tuple)
    for a, b in zip(as_tuple, want_tuple, strict=True):
        torch.testing.assert_close(a, b)
    # how pipelines read them: SDXL hidden_states[-2], HunyuanVideo hidden_states[-3], SD clip_skip out[-1][-2]
    torch.testing.assert_close(out.hidden_states[-2], want_hidden.hidden_states[-2])
    torch.testing.assert_close(out[-1][-3], want_hidden[-1][-3])
    torch.testing.assert_close(out[0], want_hidden[0])

    compiles = runtime.stats.totals()["compiles"]
    assert compiles == 2  # with and without hidden states; return_dict is not in the key
    model(ids, attention_mask=mask, output_hidden_states=True)
    assert runtime.stats.totals()["compiles"] == compiles and runtime.stats.totals()["fallbacks"] == 0


def test_pooled_outputs_of_clip(runtime):
    clip, projected = tm.clip_text_encoder(), tm.clip_text_encoder(seed=1, projection=True)
    ids, _ = _ids()
    want_pooled, want_embeds = clip(ids).pooler_output, projected(ids).text_embeds
    apply_text_encoder(clip, runtime=runtime, name="text_encoder")
    apply_text_encoder(projected, runtime=runtime, name="text_encoder_2")
    torch.testing.assert_close(clip(ids).pooler_output, want_pooled)
    out = projected(ids, output_hidden_states=True)
    torch.testing.assert_close(out.text_embeds, want_embeds)
    torch.testing.assert_close(out[0], want_embeds)  # SDXL: pooled_prompt_embeds = prompt_embeds[0]


def test_integer_ids_stay_integers(runtime):
    model = tm.clip_text_encoder()
    ids, _ = _ids()
    wrapped = apply_text_encoder(model, runtime=runtime)
    seen = []
    original_call = runtime.call

    def spy(component, args, kwargs):
        seen.append(kwargs["input_ids"].dtype)
        return original_call(component, args, kwargs)

    runtime.call = spy
    want = tm.clip_text_encoder()(ids.int()).last_hidden_state
    torch.testing.assert_close(model(ids.int()).last_hidden_state, want)
    torch.testing.assert_close(model(ids).last_hidden_state, want)
    assert seen == [torch.int32, torch.int64]
    signatures = repr(list(wrapped.components["text_encoder"].slots))
    assert "torch.int32" in signatures and "torch.int64" in signatures


def test_warm_start_rebuilds_the_output_class(persistent_runtime, monkeypatch):
    """A process that only loads artifacts never runs the model in Python: the class comes from the
    forward's annotation, with the same fields."""
    ids, mask = _ids()
    first = persistent_runtime()
    model = tm.clip_text_encoder(projection=True)
    want = model(ids, attention_mask=mask, output_hidden_states=True)
    apply_text_encoder(model, runtime=first)
    model(ids, attention_mask=mask, output_hidden_states=True)

    monkeypatch.setattr(text_encoders, "_SEEN_CLASSES", {})  # as in a fresh process
    second = persistent_runtime()
    model = tm.clip_text_encoder(projection=True)
    apply_text_encoder(model, runtime=second)
    _assert_same_output(model(ids, attention_mask=mask, output_hidden_states=True), want)
    assert second.stats.totals()["loads"] == 1 and second.stats.totals()["compiles"] == 0


def _add_adapter(model, config) -> None:
    """``model.add_adapter(config)``, or the same state built with peft directly where transformers
    refuses the installed peft (transformers 5.2x asks for peft >= 0.22, which PyPI may not have yet):
    LoRA layers injected under the adapter name ``default`` and ``model.peft_config`` set."""
    import peft

    try:
        model.add_adapter(config)
    except ValueError as err:
        if "PEFT" not in str(err):
            raise
        peft.inject_adapter_in_model(config, model, adapter_name="default")
        model.peft_config = {"default": config}
        model._hf_peft_config_loaded = True


def test_lora_scaling_set_outside_forward_is_keyed(runtime):
    """Pipelines call scale_lora_layers(text_encoder, s) before the encoder: the scaling is in the key."""
    peft = pytest.importorskip("peft")
    from diffusers.utils.peft_utils import scale_lora_layers, unscale_lora_layers

    model = tm.clip_text_encoder()
    _add_adapter(model, peft.LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                        init_lora_weights=False))
    ids, _ = _ids()
    want = {}
    for scale in (1.0, 0.5):
        scale_lora_layers(model, scale)
        want[scale] = model(ids).last_hidden_state
        unscale_lora_layers(model, scale)
    apply_text_encoder(model, runtime=runtime)
    for scale in (1.0, 0.5, 1.0):
        scale_lora_layers(model, scale)
        torch.testing.assert_close(model(ids).last_hidden_state, want[scale])
        unscale_lora_layers(model, scale)
    assert runtime.stats.totals()["compiles"] == 2


def test_unannotated_model_is_refused(runtime):
    class Plain(torch.nn.Module):
        def forward(self, input_ids):
            return input_ids.float()

    assert not is_supported_text_encoder(Plain())
    with pytest.raises(ConfigurationError, match="ModelOutput"):
        apply_text_encoder(Plain(), runtime=runtime)


def test_shapes_reach_the_component(runtime):
    wrapped = apply_text_encoder(tm.clip_text_encoder(), runtime=runtime, shapes={"input_ids": {0: (1, 4)}})
    assert wrapped.components["text_encoder"].spec["input_ids"][0].max == 4
