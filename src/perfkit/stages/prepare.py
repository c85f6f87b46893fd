"""The prepare step: the embedded default model converted once (GGUF -> safetensors), nothing to report.

A plain DVC stage (`python -m perfkit prepare`) with narrow deps, so editing perfkit's code does not
convert the model again; its output, `data/models/smollm2-135m-instruct`, is every measuring stage's dep.
"""

from __future__ import annotations

from perfkit.layout import MODEL_DIR
from perfkit.stages.base import StageSpec

STAGE = StageSpec(
    name="prepare",
    title="Prepare: the embedded default model",
    run="perfkit.prepare:main",
    notebook=False,
    code=("src/perfkit/prepare.py",),
    outs=(MODEL_DIR,),
    order=0,
)
