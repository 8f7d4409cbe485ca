"""Image slicing and normalisation, equal to transformers' ``MiniCPMV4_6ImageProcessorPil`` (spec §7).

Pure functions over PIL images and numpy arrays. The reference's integer quirks are kept on
purpose: Python's banker's ``round`` in ``ensure_divide`` and ``int()`` truncation in
``find_best_resize`` decide the token counts, so any "cleaner" arithmetic would drift.
"""

import math
import re
import threading
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from ..downsample import merge_side

# Past this many pixels an image is first reduced (box filter, by an integer factor) to at
# least REDUCE_MARGIN times the largest size the slicer can ask for, so memory stays bounded
# whatever is dropped on the window. Below it the pixels equal the reference's exactly.
MAX_EXACT_PIXELS = 64_000_000
REDUCE_MARGIN = 3
# The most pixels ever decoded from a file (RGBA: 256 MB), whatever its header claims: a JPEG
# larger than that is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's own reduction, so the full
# size never exists in memory); any other format, which decodes only whole, is refused.
MAX_DECODED_PIXELS = 64_000_000
# The slicer never asks for more than about 9 slices of 448² (and a source of 448²); a reduced
# image keeps REDUCE_MARGIN times that on each side.
NEED_SIDE = 448 * 3
JPEG_MAGIC = b"\xff\xd8\xff"
# A PIL image opened lazily decodes on first use; two threads decoding one such image at once
# share its file and decoder, which gives "broken data stream" or a segfault. Callers may share
# one image between threads (a server, a test asking three questions at once), so its first
# decode is serialised here.
_FIRST_DECODE = threading.Lock()


def ensure_divide(length: float, divisor: int) -> int:
    return max(round(length / divisor) * divisor, divisor)


def find_best_resize(size, scale_resolution: int, patch_size: int, merge: int, allow_upscale: bool = False):
    height, width = size
    if (height * width > scale_resolution * scale_resolution) or allow_upscale:
        aspect_ratio = width / height
        height = int(scale_resolution / math.sqrt(aspect_ratio))
        width = int(height * aspect_ratio)
    return ensure_divide(height, patch_size * merge), ensure_divide(width, patch_size * merge)


def refine_size(size, grid, scale_resolution: int, patch_size: int, merge: int):
    height, width = size
    rows, cols = grid
    refine_w, refine_h = ensure_divide(width, cols), ensure_divide(height, rows)
    h, w = find_best_resize((refine_h / rows, refine_w / cols), scale_resolution, patch_size, merge, True)
    return h * rows, w * cols


def sliced_grid(size, max_slice_nums: int, scale_resolution: int) -> Optional[Tuple[int, int]]:
    height, width = size
    log_ratio = math.log(width / height)
    multiple = min(math.ceil(width * height / (scale_resolution * scale_resolution)), max_slice_nums)
    if multiple <= 1:
        return None
    best, min_error = (1, 1), float("inf")
    for n in (multiple - 1, multiple, multiple + 1):
        if n == 1 or n > max_slice_nums:
            continue
        for rows in range(1, n + 1):
            if n % rows:
                continue
            error = abs(log_ratio - math.log((n // rows) / rows))
            if error < min_error or (error == min_error and rows > best[0]):
                best, min_error = (rows, n // rows), error
    return best


@dataclass(frozen=True)
class SlicePlan:
    """Where an (H, W) image goes: the resized source, and the sliced grid if any."""

    source: Tuple[int, int]
    grid: Optional[Tuple[int, int]] = None
    refine: Optional[Tuple[int, int]] = None

    @property
    def tile(self) -> Optional[Tuple[int, int]]:
        return None if self.grid is None else (self.refine[0] // self.grid[0], self.refine[1] // self.grid[1])


def plan_slices(size, *, max_slice_nums=9, scale_resolution=448, patch_size=14,
                downsample_mode="16x", slice_mode=True) -> SlicePlan:
    merge = merge_side(downsample_mode)
    grid = sliced_grid(size, max_slice_nums, scale_resolution) if slice_mode else None
    source = find_best_resize(size, scale_resolution, patch_size, merge, allow_upscale=grid is None)
    if grid is None:
        return SlicePlan(source)
    return SlicePlan(source, grid, refine_size(size, grid, scale_resolution, patch_size, merge))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency composited on white, as the reference does."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def bound_pixels(image: Image.Image, plan: SlicePlan) -> Image.Image:
    """Reduce a huge image by an integer factor, keeping it well above what the plan needs."""
    width, height = image.size
    if width * height <= MAX_EXACT_PIXELS:
        return image
    need_h = max(plan.source[0], plan.refine[0] if plan.refine else 0)
    need_w = max(plan.source[1], plan.refine[1] if plan.refine else 0)
    factor = min(height // (REDUCE_MARGIN * need_h), width // (REDUCE_MARGIN * need_w))
    return image.reduce(factor) if factor >= 2 else image


def normalize(image: Image.Image, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> np.ndarray:
    """uint8 RGB -> float32 (C, H, W): x/255 in float64 cast to float32, then (x - mean)/std."""
    x = (np.asarray(image, dtype=np.uint8).astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return x.transpose(2, 0, 1)


def patchify(chw: np.ndarray, patch_size: int) -> np.ndarray:
    """(C, H, W) -> the NaViT strip (C, p, H·W/p), patches in raster order (spec §3.1)."""
    c, h, w = chw.shape
    p = patch_size
    x = chw.reshape(c, h // p, p, w // p, p).transpose(0, 2, 1, 3, 4)
    return x.reshape(c, p, -1)


def slice_layout(image: Image.Image, *, max_slice_nums=9, scale_resolution=448, patch_size=14,
                 downsample_mode="16x", slice_mode=True) -> Tuple[SlicePlan, List[Tuple[int, int]], Optional[Tuple[int, int]]]:
    """(plan, target sizes, grid or None) of one image: what ``slice_image`` cuts, without touching
    a pixel (the placeholders of media a stored state already covers need no more than this)."""
    width, height = image.info.get("original_size", image.size)
    plan = plan_slices((height, width), max_slice_nums=max_slice_nums, scale_resolution=scale_resolution,
                       patch_size=patch_size, downsample_mode=downsample_mode, slice_mode=slice_mode)
    p = patch_size
    sizes = [(plan.source[0] // p, plan.source[1] // p)]
    if plan.grid is not None:
        th, tw = plan.tile
        sizes += [(th // p, tw // p)] * (plan.grid[0] * plan.grid[1])
    return plan, sizes, plan.grid


def slice_image(image: Image.Image, *, max_slice_nums=9, scale_resolution=448, patch_size=14,
                downsample_mode="16x", slice_mode=True, mean=(0.5,) * 3, std=(0.5,) * 3):
    """One RGB image -> (strips [source, tile_0, ...], target sizes, grid or None).

    The source is resized from the original image and the tiles are cut from one resize of the
    original to the refine size, both bicubic (PIL), exactly as the reference. The plan uses the
    size of the file as it was (``info["original_size"]``) when it was decoded reduced.
    """
    plan, sizes, grid = slice_layout(image, max_slice_nums=max_slice_nums, scale_resolution=scale_resolution,
                                     patch_size=patch_size, downsample_mode=downsample_mode, slice_mode=slice_mode)
    image = bound_pixels(image, plan)
    p = patch_size
    source = image.resize(plan.source[::-1], Image.BICUBIC)
    strips = [patchify(normalize(source, mean, std), p)]
    if grid is not None:
        refine = normalize(image.resize(plan.refine[::-1], Image.BICUBIC), mean, std)
        th, tw = plan.tile
        for r in range(grid[0]):
            for c in range(grid[1]):
                strips.append(patchify(refine[:, r * th : (r + 1) * th, c * tw : (c + 1) * tw], p))
    return strips, sizes, grid


def open_header(source) -> Image.Image:
    """The file opened, nothing decoded yet. JPEGs are opened by their plugin directly: Pillow's
    own bomb check (a warning at 89 MP, an error at 179 MP, by a process-wide setting) would stop
    a large photo that ``open_bounded`` can decode reduced."""
    from PIL import JpegImagePlugin

    if hasattr(source, "read"):
        head = source.read(3)
        source.seek(-len(head), 1)
    else:
        with open(source, "rb") as f:
            head = f.read(3)
    if head == JPEG_MAGIC:
        return JpegImagePlugin.JpegImageFile(source)
    try:
        return Image.open(source)
    except Image.DecompressionBombError as e:  # past 179 MP: say the size in our terms, not Pillow's limit
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise Image.DecompressionBombError(f"{int(pixels.group(1)) / 1e6:.0f} MP" if pixels else str(e)) from None


def open_bounded(source) -> Image.Image:
    """Open and decode an image file in bounded memory: a JPEG over ``MAX_EXACT_PIXELS`` at a
    reduced scale that still leaves plenty for the slicer; anything that would still decode to
    more than ``MAX_DECODED_PIXELS`` raises ``DecompressionBombError`` before any decoding."""
    image = open_header(source)
    width, height = image.size
    if image.format in ("JPEG", "MPO") and width * height > MAX_EXACT_PIXELS:
        scale = min(8, width // NEED_SIDE, height // NEED_SIDE) if min(width, height) >= 2 * NEED_SIDE else 1
        if scale >= 2:
            image.draft("RGB", (width // scale, height // scale))
            image.info["original_size"] = (width, height)
    if image.width * image.height > MAX_DECODED_PIXELS:
        how = "even at 1/8 scale " if image.format in ("JPEG", "MPO") else ""
        raise Image.DecompressionBombError(f"{width}x{height} is {width * height / 1e6:.0f} MP {how}")
    image.load()
    return image


def decoded(image: Image.Image) -> Image.Image:
    """A caller's PIL image with its pixels decoded, under ``_FIRST_DECODE``."""
    with _FIRST_DECODE:
        image.load()
    return image


def load_image(source) -> Image.Image:
    """A path or PIL image -> upright RGB PIL image.

    EXIF orientation is applied (as transformers' ``load_image`` does), an animated image gives
    its first frame, 16-bit greyscale is scaled to 8 bits instead of clipped, and transparency
    lands on white. Anything unreadable raises ``MediaError`` naming the file.
    """
    from PIL import ImageOps, UnidentifiedImageError

    from ..errors import MediaError

    given = isinstance(source, Image.Image)
    name = "image" if given else str(source)
    try:
        image = decoded(source) if given else open_bounded(source)
    except FileNotFoundError:
        raise MediaError(f"{name}: no such file") from None
    except UnidentifiedImageError:
        raise MediaError(f"{name}: not an image format Pillow can read (JPEG, PNG, GIF, WebP, ...)") from None
    except IsADirectoryError:
        raise MediaError(f"{name}: is a folder, not an image file") from None
    except Image.DecompressionBombError as e:
        raise MediaError(
            f"{name}: too many pixels to decode safely ({str(e).strip()}; the limit is "
            f"{MAX_DECODED_PIXELS / 1e6:.0f} MP, and only JPEGs are decoded reduced); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"{name}: the image is truncated or corrupt ({e}); re-export or re-download it") from None
    if image.width < 1 or image.height < 1:
        raise MediaError(f"{name}: the image is empty ({image.width}x{image.height})")
    original = image.size
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose the picture
        pass
    if image.size != original:  # rotated by EXIF: the remembered full size turns too
        image.info["original_size"] = image.info.get("original_size", original)[::-1]
    full_size = image.info.get("original_size")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((arr >> 8 if arr.max() > 255 else arr).astype(np.uint8))
    image = to_rgb(image)
    if full_size and full_size != image.size:
        image.info["original_size"] = full_size
    return image
