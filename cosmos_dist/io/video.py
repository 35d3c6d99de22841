"""mp4 writing and reading through imageio-ffmpeg (which honours the IMAGEIO_FFMPEG_EXE environment variable).

`write_mp4_atomic` reserves a hidden, unique temporary `.{name}.tmp-<pid>-<random>.mp4` in the same directory
(exclusive create, cosmos_dist/io/safefiles.py), lets ffmpeg encode into it, checks the result, fsyncs it and
renames it over `path`: a writer that is killed, or whose frame source raises, or whose disk fills, never
leaves a file under the final name, and removes its temporary unless it was killed.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from cosmos_dist.errors import InputError
from cosmos_dist.io.safefiles import create_temp, fsync_dir, unlink_quietly  # noqa: F401 (fsync_dir: re-export)

# The reference saves with imageio quality=5, which imageio-ffmpeg turns into `-crf 25` ((1 - 5/10) * 51 -> 25).
# Our default is x264's own default, crf 23 (slightly higher quality); pass crf=25 to match the reference.
DEFAULT_CRF = 23
DEFAULT_PRESET = "medium"
#: x264 encoder threads, fixed (see write_mp4_atomic): x264 is deterministic for a given thread count only.
X264_THREADS = 4


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _frame_array(frame, size: tuple[int, int] | None, index: int) -> np.ndarray:
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise InputError(f"frame {index}: expected uint8 (H, W, 3), got {a.dtype} {a.shape}")
    if size is not None and (a.shape[1], a.shape[0]) != size:
        raise InputError(
            f"frame {index}: size {a.shape[1]}x{a.shape[0]} differs from the first frame's {size[0]}x{size[1]}"
        )
    return a


def _pad_even(a: np.ndarray) -> np.ndarray:
    ph, pw = a.shape[0] % 2, a.shape[1] % 2
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return np.ascontiguousarray(a)


def write_mp4_atomic(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float | Fraction,
    *,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    pad_odd: bool = False,
    verify: bool = True,
    extra_output_params: list[str] | None = None,
    ffmpeg_log_level: str = "error",
) -> int:
    """Encode uint8 RGB frames (F, H, W, 3) (an array or any iterable of (H, W, 3) frames) to an H.264 mp4.

    libx264, yuv420p, `-crf {crf}`, `-preset {preset}`, `-movflags +faststart`. yuv420p needs an even width and
    height: an odd size is an `InputError`, or with `pad_odd=True` the last row/column is repeated once. Frames are
    never rescaled. With `verify`, the temporary file is decoded once and its frame count checked before the rename.
    Returns the number of frames written.
    """
    import imageio_ffmpeg

    path = Path(path)
    if not (isinstance(crf, int) and 0 <= crf <= 51):
        raise InputError(f"crf must be an integer 0..51 (lower is better quality); got {crf!r}")
    if float(fps) <= 0:
        raise InputError(f"fps must be positive; got {fps}")
    it: Iterator = iter(frames)
    try:
        first = next(it)
    except StopIteration:
        raise InputError(f"no frames to write to {path}") from None
    first = _frame_array(first, None, 0)
    height, width = first.shape[:2]
    if (height % 2 or width % 2) and not pad_odd:
        raise InputError(
            f"{path.name}: H.264 in yuv420p needs an even width and height; got {width}x{height}. "
            "Use an even size, or pad_odd=True to repeat the last row/column"
        )
    out_size = (width + width % 2, height + height % 2)
    fps_arg = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    if fps_arg.denominator == 1:
        fps_arg = int(fps_arg)  # imageio-ffmpeg asserts float/int/Fraction; keep ints as ints

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = create_temp(path, ".mp4")  # reserved by us: nothing planted at the name is ever followed
    os.close(fd)
    # x264's output depends on its thread count, which it otherwise picks from the CPUs this process may use
    # (affinity, cgroup): a fixed count makes a sample's file byte-identical on every layout and machine.
    output_params = ["-crf", str(crf), "-preset", preset, "-threads", str(X264_THREADS),
                     "-movflags", "+faststart", "-f", "mp4"]
    output_params += list(extra_output_params or [])
    try:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            out_size,
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            fps=fps_arg,
            quality=None,  # we pass -crf ourselves
            codec="libx264",
            macro_block_size=1,  # never let imageio-ffmpeg rescale; odd sizes are handled above
            ffmpeg_log_level=ffmpeg_log_level,
            output_params=output_params,
        )
    except BaseException:
        unlink_quietly(tmp)
        raise
    count = 0
    ok = False
    try:
        writer.send(None)
        size = (width, height)
        for i, frame in enumerate(itertools.chain([first], it)):
            a = first if i == 0 else _frame_array(frame, size, i)
            writer.send(_pad_even(a) if pad_odd else np.ascontiguousarray(a))
            count += 1
        writer.close()
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise OSError(f"ffmpeg did not write {tmp} (see its messages above)")
        if verify:
            got, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp))
            if got != count:
                raise OSError(f"ffmpeg wrote {got} frames to {tmp}, expected {count}")
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        ok = True
    finally:
        if not ok:
            try:
                writer.close()
            finally:
                unlink_quietly(tmp)
    return count


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    width: int
    height: int
    fps: float
    duration: float
    codec: str | None = None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count (by decoding, exact), size, fps and duration of a video file, through imageio-ffmpeg."""
    import imageio_ffmpeg

    p = Path(path)
    if not p.is_file():
        raise InputError(f"video not found: {p}")
    reader = imageio_ffmpeg.read_frames(str(p))
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as err:
        raise InputError(f"could not read video {p}: {err}") from err
    finally:
        reader.close()
    try:
        nframes, secs = imageio_ffmpeg.count_frames_and_secs(str(p))
    except RuntimeError as err:
        raise InputError(f"could not count the frames of {p}: {err}") from err
    width, height = meta["size"]
    return VideoInfo(
        frames=int(nframes),
        width=int(width),
        height=int(height),
        fps=float(meta.get("fps") or 0.0),
        duration=float(secs if secs is not None else meta.get("duration") or 0.0),
        codec=meta.get("codec"),
    )


def read_video_frames(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, dict]:
    """Decode a video to uint8 RGB frames (F, H, W, 3); returns (frames, metadata from imageio-ffmpeg)."""
    import imageio_ffmpeg

    p = Path(path)
    if not p.is_file():
        raise InputError(f"video not found: {p}")
    reader = imageio_ffmpeg.read_frames(str(p), pix_fmt="rgb24")
    try:
        try:
            meta = next(reader)
        except (OSError, RuntimeError, StopIteration) as err:
            raise InputError(f"could not read video {p}: {err}") from err
        width, height = meta["size"]
        frames = []
        for raw in reader:
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3))
            if max_frames is not None and len(frames) >= max_frames:
                break
    finally:
        reader.close()
    if not frames:
        raise InputError(f"video {p} has no frames")
    return np.stack(frames), meta
