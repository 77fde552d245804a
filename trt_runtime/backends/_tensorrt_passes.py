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
"""

from __future__ import annotations

import logging
from typing import Any

import torch

__all__ = ["expand_copy_sources"]

logger = logging.getLogger(__name__)

_aten = torch.ops.aten
_IN_PLACE_WRITES = {_aten.copy_.default: 1, _aten.fill_.Tensor: 1, _aten.copy.default: 1}
"""Ops writing a source (argument index) into a destination (argument 0) of the destination's shape."""


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _needs_expansion(dst: Any, src: Any) -> bool:
    if not isinstance(dst, torch.Tensor) or not isinstance(src, torch.Tensor):
        return False
    return src.dtype != dst.dtype or tuple(src.shape) != tuple(dst.shape)


def expand_copy_sources(program: torch.export.ExportedProgram, component: str = "") -> int:
    """Rewrite, in place, each write of a broadcast (or differently typed) source into a tensor as a
    ``copy_`` of a source expanded and cast to the destination. Returns how many writes were rewritten."""
    graph = program.graph_module.graph
    rewritten = 0
    for node in list(graph.nodes):
        index = _IN_PLACE_WRITES.get(node.target) if node.op == "call_function" else None
        if index is None or len(node.args) <= index:
            continue
        dst_node, src_node = node.args[0], node.args[index]
        dst, src = _val(dst_node), _val(src_node)
        if not _needs_expansion(dst, src):
            continue
        with graph.inserting_before(node):
            source = src_node
            if src.dtype != dst.dtype:
                source = _call(graph, _aten._to_copy.default, (source,), {"dtype": dst.dtype},
                               src.to(dst.dtype))
            if tuple(src.shape) != tuple(dst.shape):
                sizes = [_size(graph, dst_node, i, size) for i, size in enumerate(dst.shape)]
                source = _call(graph, _aten.expand.default, (source, sizes), {},
                               _val(source).expand(*dst.shape))
        # the node itself is retargeted, so its name (which the program's signature may cite), users and
        # metadata stay; copy and copy_ cast and broadcast as fill_ does
        node.target = _aten.copy.default if node.target is _aten.copy.default else _aten.copy_.default
        node.args = (dst_node, source)
        rewritten += 1
    if rewritten:
        graph.lint()
        program.graph_module.recompile()
        logger.debug("[%s] %d broadcast write(s) given a source of the destination's shape (copy converter)",
                     component, rewritten)
    return rewritten


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
