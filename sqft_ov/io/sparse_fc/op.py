"""SparseFullyConnected nodes in an OpenVINO graph, and a Core that can read them."""

from __future__ import annotations

import functools
from pathlib import Path

from sqft_ov.io.sparse_fc.build import extension_library
from sqft_ov.io.sparse_fc.pack import PackedWeight

OP_TYPE = "SparseFullyConnected"


@functools.cache
def _factory():
    """One NodeFactory per process: it keeps the extension library loaded while its nodes live."""
    from openvino.utils.node_factory import NodeFactory

    factory = NodeFactory()
    factory.add_extension(str(extension_library()))
    return factory


def sparse_fully_connected(x, packed: PackedWeight):
    """x [..., K] (an f32 node output) -> x W^T [..., N], W given packed."""
    import openvino.opset13 as ops

    factory = _factory()
    constants = [ops.constant(packed.mask), ops.constant(packed.values), ops.constant(packed.offsets),
                 ops.constant(packed.scales)]
    return factory.create(OP_TYPE, [x, *[c.output(0) for c in constants]], {"value_bits": packed.bits})


def with_extension(core):
    """`core` (an `openvino.Core`) able to read and compile IRs that hold SparseFullyConnected nodes."""
    core.add_extension(str(extension_library()))
    return core


def _xml(ir) -> Path:
    path = Path(ir)
    return path / "openvino_model.xml" if path.is_dir() else path


def needs_extension(ir) -> bool:
    """Whether an IR (folder or .xml) holds SparseFullyConnected nodes, so that its readers need the extension."""
    xml = _xml(ir)
    return xml.is_file() and f'type="{OP_TYPE}"'.encode() in xml.read_bytes()


def core_for(ir):
    """An `openvino.Core` that can read `ir`: with the extension where the IR needs it."""
    import openvino as ov

    core = ov.Core()
    return with_extension(core) if needs_extension(ir) else core


def extension_properties(ir) -> dict:
    """What openvino_genai's pipelines take to read `ir` (`extensions`), or nothing for a plain IR."""
    return {"extensions": [str(extension_library())]} if needs_extension(ir) else {}


def extend_optimum(ir) -> None:
    """Let optimum-intel's OVModelForCausalLM read `ir`: it compiles with its own module-level Core objects."""
    if needs_extension(ir):
        _extend_optimum_cores()


@functools.cache
def _extend_optimum_cores() -> None:
    """Once per process: the library a process builds is one (`build._key`)."""
    from optimum.intel.openvino import modeling_base, modeling_decoder

    library = str(extension_library())
    for core in {id(c): c for c in (modeling_base.core, modeling_decoder.core)}.values():
        core.add_extension(library)
