"""Where a sample's files live: the one mapping (output_dir, sample_id, layout) -> paths.

Layouts (`output_layout=`):

* `flat`: every file in `output_dir` (`{id}.mp4`, `{id}.json`, `{id}.latent.pt`). Fine for small runs.
* `sharded`: `output_dir/ab/cd/{id}.*`, where `abcd` are the first 4 hex digits of the SHA-256 of the sample id.
  256 x 256 folders, filled evenly whatever the ids look like: `output_dir` holds at most 256 folders (plus the
  run's own files), each of those 256 folders, and a leaf holds about `3 * samples / 65536` files (1,500 files
  at 30 million samples).
* `auto` (the default): the layout the tree already has, else `flat`.

The tree records its layout in `output_dir/.layout.json` on the first write, so every later run, `shard-status`
and the pack/merge tools find the files without being told, and a run asking for another layout than the tree
has is refused (mixing layouts would make every finished sample look missing).

Temporary files sit beside their final file under a name that starts with a dot (`.{name}.tmp-{pid}-{random}`):
sample ids never start with a dot, so a temporary name can never be a sample's.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cosmos_dist.choices import OUTPUT_LAYOUTS
from cosmos_dist.errors import ConfigError

LAYOUT_SETTINGS = OUTPUT_LAYOUTS  # what output_layout= accepts
LAYOUTS = tuple(x for x in OUTPUT_LAYOUTS if x != "auto")  # what a tree can be
LAYOUT_FILE = ".layout.json"
FANOUT_HEX = 2  # hex digits per folder level: 256 folders a level
LEVELS = 2


@dataclass(frozen=True)
class SamplePaths:
    """Every file of one sample. `folder` is where they all live; `relative` is the video's path from output_dir."""

    folder: Path
    video: Path
    sidecar: Path
    latent: Path
    relative: str  # video path relative to output_dir, '/'-separated (recorded in the sidecar and manifest)

    def temp(self, final: Path) -> Path:
        """A fresh temporary name beside `final` (same folder, so os.replace is atomic)."""
        return final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def shard_folders(sample_id: str) -> tuple[str, ...]:
    """The sharded layout's folder names of a sample: ('ab', 'cd') from the id's SHA-256."""
    digest = hashlib.sha256(sample_id.encode("utf-8", "surrogatepass")).hexdigest()
    return tuple(digest[i * FANOUT_HEX : (i + 1) * FANOUT_HEX] for i in range(LEVELS))


def sample_paths(output_dir: str | os.PathLike, sample_id: str, layout: str = "flat") -> SamplePaths:
    """The paths of sample `sample_id` under `output_dir` in `layout` (flat | sharded)."""
    out = Path(output_dir)
    if layout == "flat":
        parts: tuple[str, ...] = ()
    elif layout == "sharded":
        parts = shard_folders(sample_id)
    else:
        raise ValueError(f"output layout must be one of {LAYOUTS}; got {layout!r}")
    folder = out.joinpath(*parts)
    return SamplePaths(
        folder=folder,
        video=folder / f"{sample_id}.mp4",
        sidecar=folder / f"{sample_id}.json",
        latent=folder / f"{sample_id}.latent.pt",
        relative="/".join((*parts, f"{sample_id}.mp4")),
    )


def recorded_layout(output_dir: str | os.PathLike) -> str | None:
    """The layout `output_dir` recorded on its first write; None for a new tree (or one older than the record,
    which is flat)."""
    try:
        rec = json.loads((Path(output_dir) / LAYOUT_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"output_dir: {Path(output_dir) / LAYOUT_FILE} is unreadable ({exc}); it records the "
                          "folder layout of the tree: restore it, or delete it if the tree is flat") from None
    layout = rec.get("layout") if isinstance(rec, dict) else None
    if layout not in LAYOUTS:
        raise ConfigError(f"output_dir: {Path(output_dir) / LAYOUT_FILE} names layout {layout!r}; expected one of "
                          f"{', '.join(LAYOUTS)}")
    return layout


def resolve_layout(output_dir: str | os.PathLike, requested: str = "auto") -> str:
    """The layout a run uses: the tree's recorded one; `requested` for a new tree (auto: flat). A request that
    differs from the tree's layout is a ConfigError naming both and the fix."""
    if requested not in LAYOUT_SETTINGS:
        raise ConfigError(f"output_layout: {requested!r}; choose auto, flat or sharded")
    have = recorded_layout(output_dir)
    if have is None:
        # A tree written before layouts were recorded is flat; so is a new tree under auto.
        return "flat" if requested == "auto" else requested
    if requested not in ("auto", have):
        raise ConfigError(f"output_layout: {output_dir} is a {have} tree but output_layout={requested} was asked "
                          f"for; use output_layout={have} (or auto) for this tree, or another output_dir")
    return have


def record_layout(output_dir: str | os.PathLike, layout: str) -> str:
    """Record `layout` in a tree that has none yet (exclusive create: the first writer wins); returns the tree's
    layout, which differs from `layout` only when another process recorded first."""
    if layout not in LAYOUTS:
        raise ValueError(f"output layout must be one of {LAYOUTS}; got {layout!r}")
    out = Path(output_dir)
    have = recorded_layout(out)
    if have is not None:
        return have
    out.mkdir(parents=True, exist_ok=True)
    data = (json.dumps({"layout": layout, "levels": LEVELS if layout == "sharded" else 0}) + "\n").encode()
    try:
        fd = os.open(out / LAYOUT_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        return recorded_layout(out) or layout
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return layout


def iter_sidecars(output_dir: str | os.PathLike, layout: str | None = None):
    """(sample_id, sidecar path) of every finished sample in the tree, walking only the layout's folders."""
    out = Path(output_dir)
    layout = layout or recorded_layout(out) or "flat"
    folders = [out]
    for _ in range(LEVELS if layout == "sharded" else 0):
        folders = [sub for f in folders for sub in _subfolders(f)]
    for folder in folders:
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    name = entry.name
                    # Temporary names start with a dot, sample ids never do.
                    if name.endswith(".json") and not name.startswith(".") and entry.is_file(follow_symlinks=False):
                        yield name[: -len(".json")], Path(entry.path)
        except (FileNotFoundError, NotADirectoryError):
            continue


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it
                          if len(e.name) == FANOUT_HEX and e.is_dir(follow_symlinks=False)
                          and all(c in "0123456789abcdef" for c in e.name))
    except FileNotFoundError:
        return []
