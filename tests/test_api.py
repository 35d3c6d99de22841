"""The Python API on the tiny preset (CPU): from_pretrained, a call with several prompts, the per-step callback,
the iterator, save with the CLI's writer, and a second call that loads nothing."""
from __future__ import annotations

import json

import numpy as np


def test_text2world_api(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from cosmos_dist import GeneratedVideo, Text2WorldPipeline

    pipe = Text2WorldPipeline.from_pretrained("checkpoints", model="tiny_text2world", height=32, width=48,
                                              num_frames=9, progress=False)
    steps = []
    videos = pipe(["a robot walks", {"prompt": "a red ball", "seed": 5}], num_steps=3, seed=1,
                  callback=lambda sid, step, total, latent: steps.append((sid, step, total)))
    assert [v.status for v in videos] == ["done", "done"] and all(isinstance(v, GeneratedVideo) for v in videos)
    assert videos[0].frames.shape == (9, 32, 48, 3) and videos[0].frames.dtype == np.uint8
    assert videos[0].metadata["seed"] == 1 and videos[1].metadata["seed"] == 5
    assert videos[0].metadata["sampler"]["num_steps"] == 3
    assert [s[1] for s in steps if s[0] == videos[0].sample_id] == [0, 1, 2]
    mp4 = videos[0].save(tmp_path / "out")
    assert mp4.is_file() and json.loads((tmp_path / "out" / f"{videos[0].sample_id}.json").read_text())["seed"] == 1
    components = pipe.components
    streamed = list(pipe.iter((f"scene {i}" for i in range(3)), num_steps=2))
    assert pipe.components is components and len(streamed) == 3  # models stay loaded
    # the same prompt and seed give the same frames through the API as before
    again = pipe("a robot walks", num_steps=3, seed=1)
    assert np.array_equal(again[0].frames, videos[0].frames)
