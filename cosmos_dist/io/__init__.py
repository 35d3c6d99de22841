"""Files a user keeps: prompt lists (JSONL), mp4 videos, sidecar JSON, the run manifest."""
from cosmos_dist.io.prompts import (
    BadLine,
    PromptItem,
    check_sample_id,
    derive_sample_id,
    load_prompts,
    read_prompts,
    read_prompts_file,
    single_prompt_item,
)
from cosmos_dist.io.records import (
    Manifest,
    build_sidecar,
    rank_info_from_env,
    read_manifest,
    runtime_versions,
    write_json_atomic,
)
from cosmos_dist.io.video import VideoInfo, probe_video, read_video_frames, write_mp4_atomic

__all__ = [
    "BadLine",
    "Manifest",
    "PromptItem",
    "VideoInfo",
    "build_sidecar",
    "check_sample_id",
    "derive_sample_id",
    "load_prompts",
    "probe_video",
    "rank_info_from_env",
    "read_manifest",
    "read_prompts",
    "read_prompts_file",
    "read_video_frames",
    "runtime_versions",
    "single_prompt_item",
    "write_json_atomic",
    "write_mp4_atomic",
]
