"""DiT checkpoints: readers (model.pt, safetensors), strict validation, variant detection, loading.

    net = load_dit("checkpoints/Cosmos-Predict1-7B-Text2World/model.pt", device="cuda")
    cfg = detect_checkpoint(path)            # DiTConfig from the file's shapes alone
    ident = checkpoint_identity(path)        # path, size, mtime, cheap fingerprint (for sidecars)

Random checkpoints in the real format (for tests and benchmarks) come from `write_random_checkpoint`
(`cosmos-dist make-checkpoint`).
"""
from cosmos_dist.checkpoint.loading import (
    CheckpointIdentity,
    check_checkpoint,
    checkpoint_identity,
    convert_checkpoint,
    detect_checkpoint,
    inspect_checkpoint,
    load_dit,
)
from cosmos_dist.checkpoint.readers import (
    EntryInfo,
    CheckpointReader,
    classify_key,
    open_checkpoint,
)
from cosmos_dist.checkpoint.synthetic import (
    EXTRA_STATE_FORMS,
    PlannedEntry,
    checkpoint_plan,
    plan_parameter_count,
    random_checkpoint,
    write_random_checkpoint,
)
from cosmos_dist.checkpoint.validation import (
    ValidationReport,
    describe_variant,
    detect_variant,
    expected_shapes,
    mismatch_message,
    preset_for,
    validate_shapes,
)

__all__ = [
    "EXTRA_STATE_FORMS",
    "CheckpointIdentity",
    "CheckpointReader",
    "check_checkpoint",
    "EntryInfo",
    "PlannedEntry",
    "ValidationReport",
    "checkpoint_identity",
    "checkpoint_plan",
    "classify_key",
    "convert_checkpoint",
    "describe_variant",
    "detect_checkpoint",
    "detect_variant",
    "expected_shapes",
    "inspect_checkpoint",
    "load_dit",
    "mismatch_message",
    "open_checkpoint",
    "plan_parameter_count",
    "preset_for",
    "random_checkpoint",
    "validate_shapes",
    "write_random_checkpoint",
]
