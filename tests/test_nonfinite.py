"""Silent bad output: a checkpoint with NaN weights is refused at load, naming the tensors; a latent that
comes out NaN/inf (here: finite but overflowing weights) fails its sample, pointing at the checkpoint, and
the run exits 1 instead of recording `done`."""
from __future__ import annotations

import pytest
import torch

from cosmos_dist.errors import CheckpointError
from cosmos_dist.pipeline.assets import resolve_assets
from cosmos_dist.pipeline.runtime import SingleProcess
from cosmos_dist.pipeline.text2world import Text2WorldPipeline
from pipeline_helpers import manifest_by_id, small_cfg

WEIGHT = "net.final_layer.linear.weight"


def _tamper(cfg, value: float):
    dit = resolve_assets(cfg, announce=False).dit
    state = torch.load(dit, weights_only=True)
    state[WEIGHT] = torch.full_like(state[WEIGHT], value)
    torch.save(state, dit)
    return dit


def test_nan_weight_is_refused_at_load(tmp_path):
    cfg = small_cfg(tmp_path / "ckpt", tmp_path / "out", "prompt=a harbour at dawn")
    dit = _tamper(cfg, float("nan"))
    with pytest.raises(CheckpointError) as info:
        Text2WorldPipeline(cfg, SingleProcess()).run()
    msg = str(info.value)
    assert str(dit) in msg and WEIGHT in msg and "NaN or inf" in msg and "--verify" in msg


def test_non_finite_latent_fails_its_sample(tmp_path):
    cfg = small_cfg(tmp_path / "ckpt", tmp_path / "out", "prompt=a harbour at dawn")
    dit = _tamper(cfg, 3e38)  # finite, so it loads; the network's output overflows
    summary = Text2WorldPipeline(cfg, SingleProcess()).run()
    assert summary.done == [] and len(summary.failed) == 1 and summary.exit_code == 1
    (event,) = manifest_by_id(tmp_path / "out").values()
    assert event["status"] == "failed"
    assert "NaN or inf" in event["reason"] and str(dit) in event["reason"], event
    assert not list((tmp_path / "out").glob("*.mp4"))
