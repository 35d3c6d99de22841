#!/usr/bin/env python
"""Download the Cosmos-Predict1 checkpoints from Hugging Face into the layout generate.py reads.

Layout (spec section 4.1), under --checkpoint-dir:

    Cosmos-Predict1-{7B,14B}-{Text2World,Video2World}/   README.md, model.pt, config.json
    Cosmos-Tokenize1-CV8x8x8-720p/                       encoder.jit, decoder.jit, autoencoder.jit, mean_std.pt, config.json
    google-t5/t5-11b/                                    config.json, tokenizer files, one copy of the weights

The tokenizer and T5 are shared by every model and fetched once. A folder whose required files are
all present (non-zero size) is skipped without contacting the hub, unless --force. After fetching,
every required file is checked and the missing ones are named.

The NVIDIA models are published under the NVIDIA Open Model License: accept it on the model's page
(https://huggingface.co/nvidia/Cosmos-Predict1-7B-Text2World) with your account, then pass that
account's token with --token or HF_TOKEN (or log in once with `hf auth login`).

Examples:
    cosmos-dist download --model 7B --kind Text2World
    cosmos-dist download --model 7B,14B --kind Text2World --kind Video2World --dry-run
    HF_TOKEN=hf_... cosmos-dist download --model 14B --checkpoint-dir /data/checkpoints

Needs the optional extra: pip install -e ".[download]"  (huggingface_hub).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

MODELS = ("7B", "14B")
KINDS = ("Text2World", "Video2World")
TOKENIZER_REPO = "nvidia/Cosmos-Tokenize1-CV8x8x8-720p"
T5_REPO = "google-t5/t5-11b"
HUB_URL = "https://huggingface.co"
INSTALL_HINT = 'huggingface_hub is not installed; install the download extra: pip install -e ".[download]" (from the repository root)'

#: T5 weight files in order of preference; exactly one form is fetched (T5-11B is ~45 GB per copy).
#: An `.index.json` stands for a sharded checkpoint; the pattern fetches its shards.
T5_WEIGHT_FORMS = (
    ("model.safetensors", ()),
    ("model.safetensors.index.json", ("model-*-of-*.safetensors",)),
    ("pytorch_model.bin", ()),
    ("pytorch_model.bin.index.json", ("pytorch_model-*-of-*.bin",)),
)
T5_WEIGHT_FILES = tuple(name for name, _ in T5_WEIGHT_FORMS)
#: What T5TokenizerFast reads: tokenizer.json (fast) or spiece.model (converted), plus optional configs.
T5_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json")


class DownloadError(Exception):
    """A problem the user can act on; printed as one message without a traceback."""


# ---- the plan --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One hub repository and the folder it goes to.

    `required`: groups of alternatives; the folder is complete when every group has at least one
    complete file (non-zero size; for an `.index.json`, every shard it names too). `optional`: fetched
    when the repository has them, never needed. `choose_weights`: the weight files are picked from
    the repository's file list at download time (T5: one copy, safetensors preferred).
    """

    label: str
    repo_id: str
    local_dir: Path
    allow_patterns: tuple[str, ...]
    required: tuple[tuple[str, ...], ...]
    optional: tuple[str, ...] = ()
    choose_weights: bool = False

    @property
    def url(self) -> str:
        return f"{HUB_URL}/{self.repo_id}"


def split_choices(values: Iterable[str] | None, choices: Sequence[str], option: str) -> list[str]:
    """`["7b,14B", "7B"]` -> `["7B", "14B"]`: comma lists and repeats, case-insensitive, deduplicated,
    in the order of `choices`. Raises DownloadError naming the option and the valid values."""
    by_lower = {c.lower(): c for c in choices}
    picked: set[str] = set()
    for value in values or ():
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if part.lower() not in by_lower:
                raise DownloadError(f"{option}: unknown value {part!r}; choose from {', '.join(choices)}")
            picked.add(by_lower[part.lower()])
    return [c for c in choices if c in picked]


def dit_dir_name(model: str, kind: str) -> str:
    return f"Cosmos-Predict1-{model}-{kind}"


def build_plan(models: Sequence[str], kinds: Sequence[str], checkpoint_dir: str | os.PathLike) -> list[Target]:
    """The repositories to fetch for these models and kinds, in order: the DiTs, the tokenizer, T5."""
    root = Path(checkpoint_dir)
    plan = []
    for model in models:
        for kind in kinds:
            name = dit_dir_name(model, kind)
            plan.append(
                Target(
                    label=f"DiT {model} {kind}",
                    repo_id=f"nvidia/{name}",
                    local_dir=root / name,
                    allow_patterns=("README.md", "model.pt", "config.json"),
                    required=(("model.pt",),),
                    optional=("README.md", "config.json"),
                )
            )
    plan.append(
        Target(
            label="video tokenizer",
            repo_id=TOKENIZER_REPO,
            local_dir=root / TOKENIZER_REPO.split("/", 1)[1],
            allow_patterns=("*.jit", "mean_std.pt", "config.json"),
            required=(("encoder.jit",), ("decoder.jit",), ("mean_std.pt",)),
            optional=("autoencoder.jit", "config.json"),
        )
    )
    plan.append(
        Target(
            label="T5 text encoder",
            repo_id=T5_REPO,
            local_dir=root / T5_REPO,
            # Weights are added by choose_weight_patterns once the repository's file list is known.
            allow_patterns=("config.json",) + T5_TOKENIZER_FILES,
            required=(("config.json",), ("tokenizer.json", "spiece.model"), T5_WEIGHT_FILES),
            optional=("tokenizer_config.json", "special_tokens_map.json"),
            choose_weights=True,
        )
    )
    return plan


def choose_weight_patterns(repo_files: Iterable[str]) -> list[str]:
    """The one weight form to fetch from a Transformers repository's file list: model.safetensors,
    else sharded safetensors, else pytorch_model.bin, else sharded .bin (never TF/Flax/GGUF)."""
    files = set(repo_files)
    for name, shard_patterns in T5_WEIGHT_FORMS:
        if name in files:
            return [name, *shard_patterns]
    raise DownloadError(
        "the repository has no PyTorch weights (" + ", ".join(T5_WEIGHT_FILES) + "); nothing T5EncoderModel can load"
    )


# ---- what is on disk -------------------------------------------------------------------------------------
def file_complete(directory: Path, name: str) -> bool:
    """Present with non-zero size; for a sharded-checkpoint index, every shard it names as well."""
    path = directory / name
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
    except OSError:
        return False
    if name.endswith(".index.json"):
        try:
            shards = set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return bool(shards) and all(file_complete(directory, shard) for shard in shards)
    return True


def missing_files(target: Target) -> list[str]:
    """The required files (or groups of alternatives, 'a or b') not complete in the target folder."""
    return [_group_label(group) for group in target.required if not any(file_complete(target.local_dir, n) for n in group)]


def _group_label(group: Sequence[str]) -> str:
    if tuple(group) == T5_WEIGHT_FILES:
        return "weights (model.safetensors or pytorch_model.bin, or their shards)"
    return " or ".join(group)


def missing_optional(target: Target) -> list[str]:
    return [n for n in target.optional if not file_complete(target.local_dir, n)]


def is_complete(target: Target) -> bool:
    return not missing_files(target)


# ---- errors from the hub ---------------------------------------------------------------------------------
_NETWORK_ERROR_NAMES = {
    "ConnectError", "ConnectionError", "ConnectTimeout", "ConnectTimeoutError", "NewConnectionError",
    "NameResolutionError", "MaxRetryError", "ReadTimeout", "TimeoutException", "Timeout", "TimeoutError",
    "ProxyError", "NetworkError", "gaierror", "LocalEntryNotFoundError", "OfflineModeIsEnabled",
}


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _chain(exc: BaseException) -> list[BaseException]:
    seen, out = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _status(exc: BaseException) -> int | None:
    code = getattr(getattr(exc, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


def explain_error(exc: BaseException, target: Target, *, token_given: bool) -> tuple[str, str]:
    """(kind, message) for an exception raised while fetching `target`; kind is one of auth, not_found,
    network, disk, other. Classified by the hub's error class names (stable across huggingface_hub
    versions) and the HTTP status, so it needs no hub import."""
    names = _class_names(exc)
    status = _status(exc)
    token_note = (
        "the token you passed does not grant access: use the token of the account that accepted the license"
        if token_given
        else "pass a token of the account that accepted it with --token hf_... or the HF_TOKEN environment variable"
    )
    if "GatedRepoError" in names:
        return "auth", (
            f"{target.repo_id} is gated (HTTP {status or '401/403'}): accept the license on {target.url} "
            f"while logged in to Hugging Face, then {token_note}"
        )
    if status in (401, 403) and "RepositoryNotFoundError" not in names:
        return "auth", (
            f"the hub refused access to {target.repo_id} (HTTP {status}): check the token; if the repository is "
            f"gated, accept the license on {target.url} while logged in, then {token_note}"
        )
    if "RepositoryNotFoundError" in names:
        # The hub answers 401 for a private or gated repository requested without valid credentials too.
        return "not_found", (
            f"{target.repo_id} was not found or needs authentication (HTTP {status or 401}): check {target.url}, "
            f"accept the license there, and {token_note}"
        )
    if "RevisionNotFoundError" in names or ("EntryNotFoundError" in names and "LocalEntryNotFoundError" not in names):
        return "not_found", f"{target.repo_id}: {exc}"
    chain_names = set().union(*(_class_names(e) for e in _chain(exc)))
    offline_env = os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")
    if "OfflineModeIsEnabled" in chain_names or (offline_env and "LocalEntryNotFoundError" in chain_names):
        return "network", (
            f"cannot fetch {target.repo_id}: offline mode is on (HF_HUB_OFFLINE is set); unset it to download"
        )
    if chain_names & _NETWORK_ERROR_NAMES or any(isinstance(e, (ConnectionError, TimeoutError)) for e in _chain(exc)):
        return "network", (
            f"cannot reach {HUB_URL} to fetch {target.repo_id} (no network, DNS failure, proxy or firewall?): "
            f"check the connection (HTTPS_PROXY for a proxy) and run again; finished files are kept. ({_first_line(exc)})"
        )
    if status is not None and status >= 500:
        return "network", f"the hub answered HTTP {status} for {target.repo_id}; try again later. ({_first_line(exc)})"
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == errno.ENOSPC:
        return "disk", f"no space left on the device holding {target.local_dir} while fetching {target.repo_id}"
    if isinstance(exc, PermissionError):
        return "disk", f"cannot write to {target.local_dir}: {exc.strerror or exc}; choose another --checkpoint-dir"
    return "other", f"fetching {target.repo_id} failed: {type(exc).__name__}: {exc}"


# ---- fetching --------------------------------------------------------------------------------------------
@dataclass
class Hub:
    """The huggingface_hub calls this tool makes (swapped for fakes in tests). `lfs_hashes(repo_id, token)`:
    {path: (sha256, size)} of the repository's LFS files, as the hub publishes them (None: not recorded)."""

    snapshot_download: Callable[..., str]
    list_repo_files: Callable[..., list[str]]
    lfs_hashes: Callable[..., dict[str, tuple[str, int]]] | None = None


def load_hub() -> Hub:
    try:
        import huggingface_hub
    except ImportError:
        raise DownloadError(INSTALL_HINT) from None

    def list_repo_files(repo_id: str, token: str | None = None) -> list[str]:
        return list(huggingface_hub.HfApi().list_repo_files(repo_id, token=token))

    def lfs_hashes(repo_id: str, token: str | None = None) -> dict[str, tuple[str, int]]:
        # The tree listing carries each LFS file's metadata: RepoFile.lfs.sha256 is the SHA-256 of the content.
        tree = huggingface_hub.HfApi().list_repo_tree(repo_id, recursive=True, token=token)
        return {f.path: (f.lfs.sha256, int(f.lfs.size)) for f in tree if getattr(f, "lfs", None) is not None}

    return Hub(snapshot_download=huggingface_hub.snapshot_download, list_repo_files=list_repo_files,
               lfs_hashes=lfs_hashes)


def record_hub_hashes(target: Target, hub: Hub, token: str | None) -> str:
    """Write the hub's published SHA-256 of the LFS files present in the target's folder (see
    cosmos_dist.checkpoint.hashes); returns a short note for the log. Best effort: a failure is a note."""
    from cosmos_dist.checkpoint.hashes import write_hash_record

    if hub.lfs_hashes is None:
        return ""
    try:
        published = hub.lfs_hashes(target.repo_id, token=token)
    except Exception as exc:  # noqa: BLE001 - the files are there; only the record is missing
        return f"; could not read the hub's SHA-256 list ({_first_line(exc)})"
    present = {name: h for name, h in published.items() if (target.local_dir / name).is_file()}
    if not present:
        return ""
    path = write_hash_record(target.local_dir, target.repo_id, present)
    return f"; hub SHA-256 of {len(present)} file(s) recorded in {path.name} (check with cosmos-dist inspect --verify)"


@dataclass
class Result:
    target: Target
    status: str  # skipped | fetched | failed
    message: str = ""
    missing: list[str] = field(default_factory=list)
    error_kind: str | None = None


def fetch_target(target: Target, hub: Hub, *, token: str | None, force: bool = False) -> Result:
    """Fetch one repository into its folder (unless complete and not forced) and verify the result."""
    if not force and is_complete(target):
        return Result(target, "skipped", "already complete")
    try:
        patterns = list(target.allow_patterns)
        if target.choose_weights:
            patterns += choose_weight_patterns(hub.list_repo_files(target.repo_id, token=token))
        hub.snapshot_download(
            target.repo_id, local_dir=str(target.local_dir), allow_patterns=patterns, token=token, force_download=force
        )
    except DownloadError as exc:
        return Result(target, "failed", f"{target.repo_id}: {exc}", missing_files(target), "other")
    except Exception as exc:  # the hub's errors: classified into a message the user can act on
        kind, message = explain_error(exc, target, token_given=token is not None)
        return Result(target, "failed", message, missing_files(target), kind)
    missing = missing_files(target)
    if missing:
        return Result(
            target, "failed",
            f"{target.repo_id}: still missing after the download: {', '.join(missing)} "
            "(interrupted download, or the repository changed its layout; run again to resume)",
            missing, "incomplete",
        )
    return Result(target, "fetched", "ok" + record_hub_hashes(target, hub, token))


def describe_plan(plan: Sequence[Target], force: bool) -> list[str]:
    """Human-readable lines for --dry-run (no network)."""
    lines = []
    for t in plan:
        files = list(t.allow_patterns)
        if t.choose_weights:
            files.append(
                "weights: model.safetensors (or its shards), else pytorch_model.bin (or its shards): one copy, "
                "picked from the repository's file list"
            )
        missing = missing_files(t)
        if not missing and not force:
            state = "complete: skip (use --force to fetch again)"
        elif not missing:
            state = "complete: fetch again (--force)"
        else:
            state = "would fetch; missing " + ", ".join(missing)
        lines.append(f"{t.repo_id} -> {t.local_dir}")
        lines.append(f"    files: {', '.join(files)}")
        lines.append(f"    {state}")
    return lines


# ---- command line ----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(
        prog="download_checkpoints.py",
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1] if "\n\n" in doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", action="append", metavar="7B|14B",
                    help="DiT size; repeat or give a comma list (default: 7B)")
    ap.add_argument("--kind", action="append", metavar="Text2World|Video2World",
                    help="model kind; repeat or give a comma list (default: Text2World)")
    ap.add_argument("--checkpoint-dir", default="checkpoints",
                    help="where generate.py's checkpoint_dir points (default: ./checkpoints)")
    ap.add_argument("--token", default=None,
                    help="Hugging Face access token (default: $HF_TOKEN, else the hub's stored login)")
    ap.add_argument("--force", action="store_true", help="fetch again even where the files are complete")
    ap.add_argument("--dry-run", action="store_true", help="print what would be fetched where; no network")
    args = ap.parse_args(argv)
    try:
        args.models = split_choices(args.model or ["7B"], MODELS, "--model")
        args.kinds = split_choices(args.kind or ["Text2World"], KINDS, "--kind")
    except DownloadError as exc:
        ap.error(str(exc))
    if not args.models:
        ap.error("--model: give at least one of " + ", ".join(MODELS))
    if not args.kinds:
        ap.error("--kind: give at least one of " + ", ".join(KINDS))
    args.token = args.token or os.environ.get("HF_TOKEN") or None
    return args


def main(argv: Sequence[str] | None = None, *, hub: Hub | None = None, out=None, err=None) -> int:
    """0: everything present; 1: something failed or is missing; 2: usage / environment error."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = parse_args(argv)
    plan = build_plan(args.models, args.kinds, args.checkpoint_dir)

    if args.dry_run:
        print(f"dry run: {len(plan)} repositories into {args.checkpoint_dir} (nothing is downloaded)", file=out)
        for line in describe_plan(plan, args.force):
            print(line, file=out)
        return 0

    if hub is None:
        try:
            hub = load_hub()
        except DownloadError as exc:
            print(f"error: {exc}", file=err)
            return 2

    results: list[Result] = []
    for i, target in enumerate(plan):
        print(f"[{i + 1}/{len(plan)}] {target.repo_id} -> {target.local_dir}", file=out, flush=True)
        result = fetch_target(target, hub, token=args.token, force=args.force)
        results.append(result)
        if result.status == "failed":
            print(f"error: {result.message}", file=err, flush=True)
            if result.error_kind == "network":
                # The same for every repository: stop rather than fail N times.
                for rest in plan[i + 1:]:
                    results.append(Result(rest, "failed", "not attempted (no connection)", missing_files(rest), "network"))
                break
        else:
            print(f"    {result.status}: {result.message}", file=out)
        optional = missing_optional(target)
        if result.status != "failed" and optional:
            print(f"    (not present, not needed: {', '.join(optional)})", file=out)

    failed = [r for r in results if r.status == "failed"]
    print("", file=out)
    for r in results:
        state = r.status if r.status != "failed" else "FAILED, missing " + (", ".join(r.missing) or "nothing")
        print(f"{r.target.local_dir}: {state}", file=out)
    if failed:
        print(f"error: {len(failed)} of {len(plan)} repositories are incomplete (messages above)", file=err)
        return 1
    print(f"all files present under {args.checkpoint_dir}", file=out)
    if "Text2World" in args.kinds:
        print(f'next: python generate.py model={args.models[0].lower()}_text2world checkpoint_dir={args.checkpoint_dir} '
              'prompt="..."', file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
