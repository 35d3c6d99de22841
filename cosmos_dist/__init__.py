"""cosmos-dist: Cosmos-Predict1 diffusion world models across many GPUs.

    from cosmos_dist import Text2WorldPipeline
    pipe = Text2WorldPipeline.from_pretrained("checkpoints", model="7b_text2world")
    [video] = pipe("A robot arm sorts parcels in a sunlit warehouse.", seed=3)
    video.frames      # (121, 704, 1280, 3) uint8
    video.save("outputs/")

The pipelines load lazily (importing cosmos_dist imports no torch).
"""
__version__ = "0.1.0"

_EXPORTS = {
    "Text2WorldPipeline": "cosmos_dist.pipeline.text2world",
    "Video2WorldPipeline": "cosmos_dist.pipeline.video2world",
    "GeneratedVideo": "cosmos_dist.pipeline.results",
    "OutputConflict": "cosmos_dist.pipeline.results",
    "StepHook": "cosmos_dist.pipeline.step_hooks",
    "StepContext": "cosmos_dist.pipeline.step_hooks",
    "compose_config": "cosmos_dist.configure",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cosmos_dist' has no attribute {name!r}")
