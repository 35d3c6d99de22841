"""`generate.py`'s body: configure logging, validate, pick the pipeline, report."""
from __future__ import annotations

import logging
import os
import sys

from cosmos_dist.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SAMPLES_FAILED,
    EXIT_USAGE,
    ConfigError,
    CosmosDistError,
)
from cosmos_dist.run_summary import gather_summary, log_summary

log = logging.getLogger("cosmos_dist")


#: Loggers of libraries whose start-up notes (megatron-core's banners about missing optional packages, ...) are
#: noise in every rank's log: shown at log_level=debug only.
LIBRARY_LOGGERS = ("megatron", "megatron.core", "transformer_engine", "torch.distributed.elastic")


def setup_logging(is_leader: bool, level_name: str = "info") -> None:
    level = getattr(logging, str(level_name).upper(), logging.INFO)
    if not is_leader:
        level = max(level, logging.WARNING)
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    quiet_libraries(str(level_name).lower() == "debug")


def quiet_libraries(verbose: bool) -> None:
    """Library banners only when asked for (log_level=debug): their loggers at WARNING, their
    import-time warnings ignored."""
    import warnings

    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        for module in ("megatron", "transformer_engine"):
            warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")


def make_pipeline(cfg, runtime):
    from cosmos_dist.models import get_preset

    if get_preset(cfg.model.preset).video2world:
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
    """Run one composed configuration; returns the exit code (cosmos_dist/errors.py): 0 everything done or
    skipped, 1 some sample failed, 2 a configuration or input error, 3 stopped before the share was finished,
    4 the shard (or the `prompt=` sample) is being run by another live process (pipeline/lease.py)."""
    from cosmos_dist.cli_util import is_rank_zero, report_once
    from cosmos_dist.configure import check_config

    setup_logging(is_rank_zero(), cfg.get("log_level", "info"))
    runtime = None
    try:
        use_sweep_folder(cfg)
        check_config(cfg)  # the schema's keys and values, as the Python API checks them (configure.py)
        from cosmos_dist.pipeline.runtime import make_runtime

        runtime = make_runtime(cfg.parallel)
        setup_logging(runtime.is_global_leader, cfg.log_level)
        # No hangs: under torchrun a rank that fails ends the job, naming itself and the cause. The summary is
        # gathered over the world inside the guard (a collective: every rank takes part).
        summary = runtime.guarded(
            lambda: gather_summary(make_pipeline(cfg, runtime).run(), runtime.is_replica_leader))
    except ConfigError as exc:
        report_once(f"error: {exc}")  # every rank has the same configuration, hence the same error: say it once
        return EXIT_USAGE
    except CosmosDistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USAGE)  # EXIT_SHARD_BUSY: the shard is running elsewhere
    finally:
        if runtime is not None:
            runtime.close()
    if summary.is_leader:
        log_summary(summary, cfg.output_dir)
    if summary.stopped_by:
        return EXIT_INTERRUPTED
    return EXIT_SAMPLES_FAILED if summary.failed else EXIT_OK
