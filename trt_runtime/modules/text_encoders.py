"""Text encoders: CLIPTextModel, CLIPTextModelWithProjection (SDXL, SD3), T5EncoderModel (SD3, Flux),
LlamaModel (HunyuanVideo), and any transformers model annotated to return a ``ModelOutput``.

Pipelines read these outputs in every way a ``ModelOutput`` allows: ``out[0]`` (the first non-None
field), ``out.text_embeds``, ``out.hidden_states[-2]`` after ``output_hidden_states=True``,
``out[-1][-(clip_skip + 1)]``. So the compiled call returns a dict of the fields the eager model
filled in, and the wrapper rebuilds the model's own output class from it: the same class, the same
fields set, the same order. The class is the one the model returned when it last ran in Python (at
compile time); a process that only loaded artifacts from disk uses the forward's return annotation,
which may name a base class with the same fields (T5: ``BaseModelOutput``).

Flags (``output_hidden_states``, ``output_attentions``) are plain bools in the key. Token ids pass
through untouched: integer tensors stay integer inputs of the graph.

Decoder-style models (``LlamaModel``) run with ``use_cache=False``: an encoder pass has no use for
the key/value cache, and a cache object is not a graph output. Their ``past_key_values`` is None.

LoRA: pipelines scale a text encoder's LoRA layers before calling it (outside ``forward``), so the
current scaling is read from the layers and put in the key (see ``LoraTracker``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..errors import ConfigurationError
from ..runtime import TensorRTRuntime
from .base import OriginalForward, SpecLike
from .family import LORA_KEY, CallBinder, LoraTracker, Wrapped, output_class, wrap_in_place

__all__ = ["apply_text_encoder", "is_supported_text_encoder"]

logger = logging.getLogger(__name__)


def is_supported_text_encoder(model: torch.nn.Module) -> bool:
    """Whether ``apply_text_encoder`` can wrap ``model`` (a transformers model whose forward is
    annotated to return one ``ModelOutput`` class)."""
    try:
        from transformers.utils import ModelOutput
    except ImportError:
        return False
    return output_class(type(model).forward, ModelOutput) is not None


_SEEN_CLASSES: dict[type, type] = {}
"""Output class each model class really returned, recorded whenever a forward runs in Python (eager
or while being traced). Annotations can name a base class (T5EncoderModel says ``BaseModelOutput``
and returns ``BaseModelOutputWithPastAndCrossAttentions``); the annotation is only the fallback for a
process that loaded every artifact from disk, and it has the same fields."""


class _FieldsCore(torch.nn.Module):
    """The compiled unit: the original forward with ``return_dict=True``, its filled fields as a dict."""

    def __init__(self, original: OriginalForward) -> None:
        super().__init__()
        self.original = original

    def forward(self, **kwargs: Any) -> dict[str, Any]:
        kwargs.pop(LORA_KEY, None)
        out = self.original(**kwargs, return_dict=True)
        _SEEN_CLASSES[type(self.original.inner)] = type(out)
        return {key: value for key, value in out.items() if _is_tensors(value)}


def _is_tensors(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, tuple) and all(isinstance(v, torch.Tensor) for v in value)


def apply_text_encoder(
    model: torch.nn.Module,
    *,
    runtime: TensorRTRuntime | None = None,
    name: str = "text_encoder",
    shapes: SpecLike | None = None,
    settings: dict | None = None,
) -> Wrapped:
    """Install the runtime on a transformers text encoder, in place (class, config, dtype unchanged).

    ``shapes`` declares ranges one artifact serves, e.g. ``{"input_ids": {0: (1, 4)}}`` for the batch
    size. Transformers forwards take ``**kwargs``, so argument names are not checked here."""
    from transformers.utils import ModelOutput

    forward_fn = type(model).forward
    cls = output_class(forward_fn, ModelOutput)
    if cls is None:
        raise ConfigurationError(
            f"{type(model).__name__}.forward is not annotated with one ModelOutput class",
            component=name, hint="wrap it with TensorRTModule instead, or leave it eager",
        )
    binder = CallBinder(forward_fn)
    cacheable = "use_cache" in binder.all_names

    def call(component, lora: LoraTracker, args: tuple, kwargs: dict[str, Any]) -> Any:
        call = binder.bind(args, kwargs)
        return_dict = call.pop("return_dict", None)
        if return_dict is None:
            return_dict = getattr(model.config, "return_dict", True)
        if cacheable:
            if call.get("use_cache"):
                component.warn_once("use_cache", "[%s] use_cache=True ignored: the wrapped encoder "
                                    "returns no key/value cache", component.name)
            call["use_cache"] = False
        lora.prepare(call, None)
        fields = component(**call)  # runs the model in Python when it compiles: class recorded
        out = _SEEN_CLASSES.get(type(model), cls)(**fields)
        return out if return_dict else out.to_tuple()

    # Their attention takes a bias (CLIP and LLaMA: the causal mask; T5: the relative position bias).
    return wrap_in_place(model, name, core=_FieldsCore, call=call, runtime=runtime, shapes=shapes,
                         settings=settings, traits=frozenset({"attention_bias"}), family=f"{__name__}:apply_text_encoder")
