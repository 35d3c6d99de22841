"""Text2World: prompt -> T5 -> guided EDM sampling of the DiT -> tokenizer decode -> frames (+ mp4, sidecar).

Its whole run order is WorldPipeline's (pipeline/base.py); Text2World has no condition besides the text.
"""
from __future__ import annotations

from cosmos_dist.pipeline.base import WorldPipeline


class Text2WorldPipeline(WorldPipeline):
    """Text -> video. Build with `Text2WorldPipeline.from_pretrained(checkpoint_dir, model=...)`."""

    kind = "text2world"
