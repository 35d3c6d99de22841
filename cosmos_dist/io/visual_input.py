"""Video2World conditioning input: read an image or a video, resize it to the model's frame size, normalise.

Reading (`read_visual_input`):
* images `.jpg .jpeg .png .webp` (Pillow) give one frame. RGBA / LA / palette-with-transparency images are
  composited on white, `out = a * rgb + (1 - a) * 255` with `a = alpha / 255`, rounded to the nearest integer (the
  reference blends onto white too, spec 1.3 step 1). Grayscale, palette, CMYK and 16-bit images become RGB. The
  EXIF orientation is applied, so the model sees the photo the way a viewer shows it (the reference ignores it; it
  only matters for files that carry the tag, mostly phone photos).
* videos `.mp4` (and `.mov .mkv .webm .avi`, all through imageio-ffmpeg) are decoded frame by frame; only the last
  `num_input_frames` frames are kept, so a long video never sits in memory whole.
Errors are `InputError`s that name the file and the fix: missing file, unsupported type (the message lists the
supported extensions), unreadable file, a video with fewer frames than `num_input_frames`, an image with
`num_input_frames` > 1.

Resizing (`resize_frames`) to the model's frame size `height x width` (the config's; 704x1280 for 7B/14B):
* `stretch`, the reference: both axes scaled independently (the aspect ratio is not kept), bicubic with antialias
  (spec 1.3 step 3).
* `crop`: keep the aspect ratio and fill the frame: the largest centred region of the input with the frame's aspect
  ratio is cut out, then scaled (bicubic, antialias) to the frame size.
* `pad`: keep the aspect ratio and show all of the input: scale it (bicubic, antialias) to fit inside the frame,
  centre it, fill the rest with 0 in [-1, 1] space (pixel value 128, mid-grey). 0 is what the pipeline fills the
  frames after the input with, so padding looks like the rest of the clip's "no content" to the tokenizer.

Normalisation is the reference's `x / 128 - 1` (not `/ 127.5`; spec 1.3 step 2, pitfall 7), so 0 -> -1 and
255 -> 0.9921875. The reference normalises, casts to bf16, then resizes in bf16; torch's CPU antialiased bicubic
has no bf16 kernel, so here the resize runs in float32 and the result is cast to the tokenizer dtype once. The
bicubic overshoot past [-1, 1] is kept, as in the reference.
"""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cosmos_dist.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
from cosmos_dist.choices import RESIZE_MODES  # noqa: E402  (the one list)
#: Value of the `pad` border in [-1, 1] space (pixel 128): the same as the zero frames after the input.
PAD_VALUE = 0.0

SUPPORTED = f"images {' '.join(IMAGE_EXTENSIONS)}; videos {' '.join(VIDEO_EXTENSIONS)}"


@dataclass(frozen=True)
class VisualInput:
    path: Path
    kind: str  # "image" | "video"
    frames: np.ndarray  # (F, H, W, 3) uint8: the last num_input_frames frames (all of them if not limited)
    original_size: tuple[int, int]  # (width, height) of the file's frames
    total_frames: int  # frames in the file (1 for an image)
    fps: float | None = None  # videos only

    def describe(self) -> dict:
        """JSON-ready facts for the sidecar."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "original_size": {"width": int(self.original_size[0]), "height": int(self.original_size[1])},
            "total_frames": int(self.total_frames),
            "fps": self.fps,
        }


def input_kind(path: str | os.PathLike) -> str:
    """"image" or "video" from the extension; InputError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    shown = f"'{suffix}'" if suffix else "no extension"
    raise InputError(f"input {path}: unsupported file type ({shown}); supported: {SUPPORTED}")


def check_visual_input(path: str | os.PathLike, num_input_frames: int | None = None) -> str:
    """The checks that need no decoding: the file exists, its type is supported, and an image is not asked for
    more than one frame. Returns the kind ("image" | "video")."""
    p = Path(path)
    kind = input_kind(p)
    if not p.exists():
        raise InputError(f"input {p}: file not found (give an existing image or video; supported: {SUPPORTED})")
    if not p.is_file():
        raise InputError(f"input {p}: not a file (give an image or a video; supported: {SUPPORTED})")
    if kind == "image" and num_input_frames is not None and num_input_frames > 1:
        raise InputError(
            f"input {p}: an image is a single frame but num_input_frames={num_input_frames}; "
            f"use num_input_frames=1, or give a video of at least {num_input_frames} frames"
        )
    return kind


def read_visual_input(path: str | os.PathLike, num_input_frames: int | None = None) -> VisualInput:
    """Read an image or a video into uint8 RGB frames (F, H, W, 3).

    `num_input_frames`: keep only the last that many frames, and fail if the file has fewer; None keeps all frames.
    """
    if num_input_frames is not None and num_input_frames < 1:
        raise InputError(f"num_input_frames must be at least 1; got {num_input_frames}")
    p = Path(path)
    kind = check_visual_input(p, num_input_frames)
    if kind == "image":
        frame = _read_image(p)
        h, w = frame.shape[:2]
        return VisualInput(p, "image", frame[None], (w, h), 1)
    return _read_video(p, num_input_frames)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _image_to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise InputError(
            f"input {path}: could not read it as an image ({err}); supported: {SUPPORTED}"
        ) from None


def _image_to_rgb(im) -> np.ndarray:
    """A Pillow image -> uint8 (H, W, 3); transparency composited on white."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16-bit / 32-bit grayscale: Pillow's convert("RGB") would clip at 255 instead of scaling.
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        if mode == "F":
            top = 1.0 if a.max() <= 1.0 else 255.0
        g = np.clip(np.rint(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        out = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _read_video(path: Path, num_input_frames: int | None) -> VisualInput:
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    except (OSError, RuntimeError) as err:
        raise InputError(f"input {path}: could not read it as a video ({err}); supported: {SUPPORTED}") from None
    keep: deque = deque(maxlen=num_input_frames)
    count = 0
    try:
        try:
            meta = next(reader)
        except (OSError, RuntimeError, StopIteration) as err:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise InputError(
                f"input {path}: could not read it as a video ({reason}); supported: {SUPPORTED}"
            ) from None
        width, height = meta["size"]
        try:
            for raw in reader:
                keep.append(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3))
                count += 1
        except (OSError, RuntimeError) as err:
            raise InputError(f"input {path}: decoding failed after {count} frames ({err})") from None
    finally:
        reader.close()
    if count == 0:
        raise InputError(f"input {path}: the video has no frames; supported: {SUPPORTED}")
    if num_input_frames is not None and count < num_input_frames:
        raise InputError(
            f"input {path}: the video has {count} frame{'s' if count != 1 else ''} but num_input_frames="
            f"{num_input_frames} needs at least {num_input_frames}; give a longer video or use num_input_frames=1"
        )
    fps = meta.get("fps")
    return VisualInput(path, "video", np.stack(list(keep)), (int(width), int(height)), count, float(fps) if fps else None)


# ---- resizing ---------------------------------------------------------------------------------------------------
def resize_plan(src_hw: tuple[int, int], dst_hw: tuple[int, int], mode: str) -> dict:
    """Where the input goes in the frame: `crop` (top, left, h, w) of the source region used, `size` (h, w) it is
    scaled to, and `offset` (top, left) of that in the (dst_h, dst_w) frame."""
    if mode not in RESIZE_MODES:
        raise InputError(f"resize_mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    sh, sw = int(src_hw[0]), int(src_hw[1])
    dh, dw = int(dst_hw[0]), int(dst_hw[1])
    full = (0, 0, sh, sw)
    if mode == "stretch":
        return {"crop": full, "size": (dh, dw), "offset": (0, 0)}
    if mode == "crop":
        # The largest centred region with the frame's aspect ratio (dw/dh), compared exactly in integers.
        if sw * dh > dw * sh:  # the input is wider: cut the sides
            cw = max(1, min(sw, round(sh * dw / dh)))
            return {"crop": (0, (sw - cw) // 2, sh, cw), "size": (dh, dw), "offset": (0, 0)}
        ch = max(1, min(sh, round(sw * dh / dw)))
        return {"crop": ((sh - ch) // 2, 0, ch, sw), "size": (dh, dw), "offset": (0, 0)}
    # pad
    if sw * dh > dw * sh:  # the input is wider: full width, bars above and below
        h = max(1, min(dh, round(sh * dw / sw)))
        return {"crop": full, "size": (h, dw), "offset": ((dh - h) // 2, 0)}
    w = max(1, min(dw, round(sw * dh / sh)))
    return {"crop": full, "size": (dh, w), "offset": (0, (dw - w) // 2)}


def _bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return torch.nn.functional.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


def normalize_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (F, 3, H, W) as `x / 128 - 1` (exact in float32 and bf16)."""
    if isinstance(frames, np.ndarray) and not frames.flags.writeable:
        frames = frames.copy()  # decoded video frames are read-only views of ffmpeg's buffers
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise InputError(f"expected uint8 frames (F, H, W, 3); got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).to(torch.float32) / 128.0 - 1.0


def resize_frames(
    frames: np.ndarray | torch.Tensor,
    height: int,
    width: int,
    mode: str = "stretch",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> (F, 3, height, width) in [-1, 1] (`x / 128 - 1`), in `dtype`, resized per `mode`."""
    x = normalize_frames(frames)
    plan = resize_plan(tuple(x.shape[-2:]), (height, width), mode)
    top, left, ch, cw = plan["crop"]
    x = _bicubic(x[:, :, top : top + ch, left : left + cw], plan["size"])
    if mode == "pad":
        out = torch.full((x.shape[0], 3, height, width), PAD_VALUE, dtype=torch.float32)
        oy, ox = plan["offset"]
        out[:, :, oy : oy + x.shape[2], ox : ox + x.shape[3]] = x
        x = out
    return x.to(dtype)


def load_condition_frames(
    path: str | os.PathLike,
    num_input_frames: int,
    height: int,
    width: int,
    mode: str = "stretch",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, VisualInput]:
    """The last `num_input_frames` frames of the input, resized and normalised: ((F, 3, height, width), info)."""
    info = read_visual_input(path, num_input_frames)
    return resize_frames(info.frames, height, width, mode, dtype), info
