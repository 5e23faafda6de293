"""The integer model (docs/integer-model.md): what `qvit export` writes and every later stage reads.

numpy only (no torch, no TVM), shared by the exporter (qvit/), the compile stage and the tests:

    spec.py        the format's vocabulary: op table, window geometry, IntModelError
    format.py      IntModel, read / written as one safetensors file
    validate.py    every problem of a file as one IntModelError line
    shapes.py      shape inference over the graph
    graph.py       GraphBuilder and the generic transformer block layout
    reference.py   the numpy integer reference every other stage is checked against
    calibrate.py   activation steps from data
    synthetic.py   random integer forms for the synthetic models
    deit.py        DeiT: layout and random_deit
    swin.py        Swin: layout, shifted-window mask and random_swin
"""

from .calibrate import calibrate
from .deit import lay_out_deit, random_deit
from .format import IntModel, read_safetensors, write_safetensors
from .graph import GraphBuilder
from .spec import (
    FAMILIES,
    FORMAT,
    FORMAT_VERSION,
    IRM_STATS,
    IRM_TENSORS,
    OP_FIELDS,
    QUANTIZED_OPS,
    IntModelError,
    compact,
    irm_stat,
    num_windows,
    padded_grid,
    pair,
)
from .swin import lay_out_swin, random_swin, shift_window_mask

__all__ = [
    "FAMILIES", "FORMAT", "FORMAT_VERSION", "GraphBuilder", "IRM_STATS", "IRM_TENSORS", "IntModel",
    "IntModelError", "OP_FIELDS", "QUANTIZED_OPS", "calibrate", "compact", "irm_stat", "lay_out_deit",
    "lay_out_swin", "num_windows", "padded_grid", "pair", "random_deit", "random_swin",
    "read_safetensors", "shift_window_mask", "write_safetensors",
]
