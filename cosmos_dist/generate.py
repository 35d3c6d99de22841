"""`generate.py`'s body: configure logging, validate, pick the pipeline, report."""
from __future__ import annotations

import logging
import os
import sys

from cosmos_dist.config import validate_config
from cosmos_dist.errors import CosmosDistError

log = logging.getLogger("cosmos_dist")


def setup_logging(is_leader: bool) -> None:
    level = logging.INFO if is_leader else logging.WARNING
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def make_runtime(cfg):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and cfg.parallel.cp_size == 1 and not cfg.parallel.cfg_parallel:
        from cosmos_dist.pipeline.runtime import SingleProcess

        return SingleProcess()
    from cosmos_dist.parallel.runtime import DistributedRuntime

    return DistributedRuntime.create(cfg.parallel)


def make_pipeline(cfg, runtime):
    from cosmos_dist.models import get_preset

    preset = get_preset(cfg.model.preset)
    if preset.video2world:
        from cosmos_dist.pipeline.video2world import Video2WorldPipeline

        return Video2WorldPipeline(cfg, runtime)
    from cosmos_dist.pipeline.text2world import Text2WorldPipeline

    return Text2WorldPipeline(cfg, runtime)


def use_sweep_folder(cfg) -> None:
    """Under --multirun each combination writes to its own sub-folder (conf/generate.yaml names it
    after the swept values), so four combinations of one prompt never collide or skip each other."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            cfg.output_dir = HydraConfig.get().runtime.output_dir


def run_cli(cfg) -> int:
    """Returns the process exit code: 0 all done/skipped, 1 some sample failed, 2 a usage error."""
    setup_logging(os.environ.get("RANK", "0") == "0")
    runtime = None
    try:
        use_sweep_folder(cfg)
        validate_config(cfg)
        runtime = make_runtime(cfg)
        setup_logging(runtime.is_global_leader)
        if hasattr(runtime, "layout"):
            from cosmos_dist.parallel.guard import run_guarded

            # No hangs: a rank that fails ends the job, naming itself and the cause.
            summary = run_guarded(lambda: make_pipeline(cfg, runtime).run(), runtime.layout)
        else:
            summary = make_pipeline(cfg, runtime).run()
    except CosmosDistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # 4: the shard is running elsewhere (pipeline/lease.py)
    finally:
        if runtime is not None:
            runtime.close()
    blocked = getattr(summary, "blocked", [])
    log.info(
        "%d done, %d skipped, %d failed%s -> %s", len(summary.done), len(summary.skipped), len(summary.failed),
        f", {len(blocked)} blocked by the guardrails (no video; not a failure)" if blocked else "", cfg.output_dir,
    )
    if summary.failed:
        log.error("failed: %s (reasons in %s/manifest.jsonl)", ", ".join(summary.failed[:10]), cfg.output_dir)
    return summary.exit_code
