"""Rewrites of an exported program that keep its meaning and work around converters of the pinned
torch-tensorrt releases. Each is applied only where its pattern occurs, before the program reaches
``torch_tensorrt.dynamo.compile``.

``expand_copy_sources``: torch-tensorrt's converter of ``aten.copy`` (2.11-2.14, both flavours) returns the
source tensor as it is, ignoring the destination's shape (and, in 2.11, its dtype). An in-place write of a
broadcast value into a slice, such as HunyuanVideo's token refiner setting one column of a boolean
attention mask (``mask[:, :, :, 0] = True``), becomes ``copy(slice, scalar)`` once functionalized; the engine
then gets a tensor of the wrong rank and the next layer fails (TensorRT-RTX 1.4: "unsqueeze index (3) must
be less than length (1) of data", then ``ValueError: __len__() should return >= 0``). The pass gives every
such write a source already expanded (and cast) to the destination's shape and dtype, which is what the
write meant, so the converter's shortcut becomes correct.

``uneven_attention``: the attention nodes whose query, key and value are not all of one shape (the
cross-attention of a UNet or ControlNet: 4096 image tokens attending to 77 text tokens). In 2.11 every
attention converter's validator refuses them, so they stay in PyTorch, where ``torch.export`` cannot save
them, and the build had to be made again with ``decompose_attention=True`` (on an H200, the full-size SD1.5
UNet's first build of 126 s was two builds). Seen in the program, the decomposition is asked for up front.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["FUSED_ATTENTION", "expand_copy_sources", "fx_graphs", "uneven_attention"]

logger = logging.getLogger(__name__)

_aten = torch.ops.aten
_IN_PLACE_WRITES = {_aten.copy_.default: 1, _aten.fill_.Tensor: 1, _aten.copy.default: 1}
"""Ops writing a source (argument index) into a destination (argument 0) of the destination's shape."""


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _needs_expansion(dst: Any, src: Any) -> bool:
    if not isinstance(dst, torch.Tensor) or not isinstance(src, torch.Tensor):
        return False
    from torch.fx.experimental.symbolic_shapes import statically_known_true, sym_eq

    # a size known only at run time (data-dependent) is not compared, which would need a guard: expanding to
    # the destination's own sizes is right whatever they are
    return src.dtype != dst.dtype or not statically_known_true(sym_eq(tuple(src.shape), tuple(dst.shape)))


def expand_copy_sources(program: torch.export.ExportedProgram, component: str = "") -> int:
    """Rewrite, in place, each write of a broadcast (or differently typed) source into a tensor as a
    ``copy_`` of a source expanded and cast to the destination, in every graph of ``program`` (branches of
    ``torch.cond`` included). Returns how many writes were rewritten; a program this cannot rewrite is left as
    it was (the rewrite only works around a converter), with a message."""
    try:
        plans = [(graph_module, _plan(graph_module.graph)) for graph_module in program.graph_module.modules()
                 if isinstance(graph_module, torch.fx.GraphModule)]
    except Exception as err:  # noqa: BLE001 - nothing was changed yet
        logger.warning("[%s] could not check the program's in-place writes for torch-tensorrt's copy converter "
                       "(%s: %s); it is converted as exported", component, type(err).__name__, err)
        return 0
    rewritten = 0
    for graph_module, plan in plans:
        for node, cast, expand in plan:
            _apply(graph_module.graph, node, cast, expand)
        if plan:
            graph_module.graph.lint()
            graph_module.recompile()
            rewritten += len(plan)
    if rewritten:
        logger.debug("[%s] %d broadcast write(s) given a source of the destination's shape (copy converter)",
                     component, rewritten)
    return rewritten


def _plan(graph: torch.fx.Graph) -> list[tuple]:
    """The writes to rewrite, each with the fake values of its cast and expanded sources (None: not needed).
    Reads only: every check and fake computation happens here, before anything changes."""
    plan = []
    for node in graph.nodes:
        index = _IN_PLACE_WRITES.get(node.target) if node.op == "call_function" else None
        if index is None or len(node.args) <= index:
            continue
        dst, src = _val(node.args[0]), _val(node.args[index])
        if not _needs_expansion(dst, src):
            continue
        cast = src.to(dst.dtype) if src.dtype != dst.dtype else None
        expand = (cast if cast is not None else src).expand(*dst.shape)
        plan.append((node, cast, expand))
    return plan


def _apply(graph: torch.fx.Graph, node: torch.fx.Node, cast: Any, expand: Any) -> None:
    dst_node, source = node.args[0], node.args[_IN_PLACE_WRITES[node.target]]
    dst = _val(dst_node)
    with graph.inserting_before(node):
        if cast is not None:
            source = _call(graph, _aten._to_copy.default, (source,), {"dtype": dst.dtype}, cast)
        sizes = [_size(graph, dst_node, i, size) for i, size in enumerate(dst.shape)]
        source = _call(graph, _aten.expand.default, (source, sizes), {}, expand)
    # the node itself is retargeted, so its name (which the program's signature may cite), users and
    # metadata stay; copy and copy_ cast and broadcast as fill_ does
    node.target = _aten.copy.default if node.target is _aten.copy.default else _aten.copy_.default
    node.args = (dst_node, source)


def _call(graph: torch.fx.Graph, target: Any, args: tuple, kwargs: dict, val: Any) -> torch.fx.Node:
    node = graph.call_function(target, args, kwargs)
    node.meta["val"] = val
    return node


def _size(graph: torch.fx.Graph, tensor_node: torch.fx.Node, dim: int, size: Any) -> Any:
    """``size`` as an int, or a ``sym_size`` node of ``tensor_node`` where it is symbolic."""
    if isinstance(size, int):
        return size
    node = graph.call_function(_aten.sym_size.int, (tensor_node, dim))
    node.meta["val"] = size
    return node


FUSED_ATTENTION = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                   "_scaled_dot_product_cudnn_attention")
"""The fused CUDA attention ops (``torch.export`` cannot serialise them outside an engine)."""
_ATTENTION = ("scaled_dot_product_attention", *FUSED_ATTENTION)


def fx_graphs(root: torch.nn.Module) -> Iterator[torch.fx.Graph]:
    """Every fx graph under ``root``: a program's graph module and its ``torch.cond`` branches, or a compiled
    program's PyTorch submodules (engine modules and plain modules have none)."""
    for module in root.modules():
        graph = getattr(module, "graph", None)
        if isinstance(graph, torch.fx.Graph):
            yield graph


def uneven_attention(program: Any) -> list[str]:
    """Names of the attention nodes of ``program`` (every graph, ``torch.cond`` branches included) whose query,
    key and value are not known to be of one shape."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true, sym_eq

    found = []
    for graph in fx_graphs(program.graph_module):
        for node in graph.nodes:
            name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
            if node.op != "call_function" or name not in _ATTENTION or len(node.args) < 3:
                continue
            query, key, value = (_val(arg) for arg in node.args[:3])
            if not all(isinstance(t, torch.Tensor) for t in (query, key, value)):
                continue
            if not (statically_known_true(sym_eq(query.shape, key.shape))
                    and statically_known_true(sym_eq(key.shape, value.shape))):
                found.append(node.name)
    return found
