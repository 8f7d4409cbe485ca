"""``Processor``: chat messages with images and videos -> the model's inputs (spec §7-10)."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import mlx.core as mx
import numpy as np

from ..downsample import merge_side, patches_per_token
from ..options import check
from . import prompt
from .image import load_image, slice_image, slice_layout
from .video import load_video_units

# Video settings of the model card: one slice per frame, no image ids.
VIDEO_DEFAULTS = dict(video_max_slice_nums=1, video_use_image_id=False, max_num_frames=128, stack_frames=1, fps=1.0)
# What MiniCPMV4_7Processor (transformers 5.24) does differently from 4.6's: a video never
# carries an <image_id>, whatever is asked (it is one sequence of frames, as 4.7 was trained).
# Its image and video processors are 4.6's, its chat template is the checkpoint's own, and
# its token types (text, image, video) follow from the ids (model/canvas.py's ``modalities``).
VIDEO_IMAGE_IDS = {"minicpmv4_6": True, "minicpmv4_7": False}


@dataclass
class EncodedVideo:
    """Frames already through the vision tower: their placeholder text, features and times.

    A video item may be one of these instead of a path, so a question about frames seen
    before (a summarised video) neither decodes nor encodes anything."""

    replacement: str
    features: mx.array
    frame_times: List[float]
    target_sizes: Optional[np.ndarray] = None  # the frames' patch grids: 4.7 places them on its canvas

    @property
    def tokens(self) -> int:
        return self.features.shape[0]


@dataclass
class ProcessorOutput:
    """What ``Processor.__call__`` returns: model inputs (``mx.array``s in the layout of the
    transformers processor) plus what generation and the app need to know about them."""

    input_ids: mx.array
    pixel_values: Optional[mx.array] = None
    target_sizes: Optional[mx.array] = None
    pixel_values_videos: Optional[mx.array] = None
    target_sizes_videos: Optional[mx.array] = None
    video_features: Optional[mx.array] = None  # set when the videos came as EncodedVideo
    downsample_mode: str = "16x"
    text: str = ""
    images: int = 0  # how many images and videos the messages held
    videos: int = 0
    image_spans: List[Tuple[int, int]] = field(default_factory=list)
    video_spans: List[Tuple[int, int]] = field(default_factory=list)
    frame_times: List[List[float]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)  # about the media as read (a short video)

    def model_inputs(self) -> dict:
        """Keyword arguments for ``Model.__call__`` / ``Model.embed``."""
        return dict(
            pixel_values=self.pixel_values, target_sizes=self.target_sizes,
            pixel_values_videos=self.pixel_values_videos, target_sizes_videos=self.target_sizes_videos,
            downsample_mode=self.downsample_mode,
        )

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[-1]


@dataclass
class PackedVision:
    pixel_values: Optional[np.ndarray]  # None when packed for the placeholders alone (pixels=False)
    target_sizes: np.ndarray
    replacements: List[str]
    tokens: List[int]  # placeholder tokens per image / video


def media_items(messages) -> List[Tuple[str, object]]:
    """(kind, source) of every image and video item, in conversation order."""
    found = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for item in content:
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind in ("image", "image_url") or "image" in item or "image_url" in item:
                src = item.get("image", item.get("path", item.get("url", item.get("image_url"))))
                found.append(("image", src["url"] if isinstance(src, dict) else src))
            elif kind == "video" or "video" in item:
                found.append(("video", item.get("video", item.get("path", item.get("url")))))
    return found


class Processor:
    def __init__(self, tokenizer, image_config: Optional[dict] = None, generation_config: Optional[dict] = None,
                 model_type: str = "minicpmv4_6"):
        if model_type not in VIDEO_IMAGE_IDS:
            raise ValueError(f"no processor for model_type {model_type!r}; known: {', '.join(VIDEO_IMAGE_IDS)}")
        self.model_type = model_type
        self.tokenizer = tokenizer
        cfg = dict(max_slice_nums=9, scale_resolution=448, patch_size=14, use_image_id=True, slice_mode=True,
                   image_mean=[0.5] * 3, image_std=[0.5] * 3, downsample_mode="16x")
        cfg.update({k: v for k, v in (image_config or {}).items() if k in cfg})
        self.image_config = cfg
        self.generation_config = generation_config or {}
        self.tokens = prompt.SpecialTokens.from_tokenizer(tokenizer)
        self.plain = prompt.PlainText(tokenizer)

    @classmethod
    def from_pretrained(cls, path) -> "Processor":
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        path = Path(path)
        gen = _read_json(path / "generation_config.json")
        eos = gen.get("eos_token_id")
        eos = [eos] if isinstance(eos, int) else eos
        tokenizer = load_tokenizer(path, eos_token_ids=eos)
        config = _read_json(path / "config.json")
        image_config = _read_json(path / "preprocessor_config.json")
        if "downsample_mode" in config:  # 4.7 keeps it in config.json; a preprocessor value wins
            image_config.setdefault("downsample_mode", config["downsample_mode"])
        return cls(tokenizer, image_config, gen, config.get("model_type", "minicpmv4_6"))

    @property
    def eos_token_ids(self) -> List[int]:
        return sorted(self.tokenizer.eos_token_ids)

    # -- pieces -----------------------------------------------------------------------------
    def pack(self, units_per_item, pad: str, *, max_slice_nums, downsample_mode, use_image_id,
             first_id: int = 0, pixels: bool = True) -> PackedVision:
        """Slice every image of every item; one placeholder text per item (spec §8). Without
        ``pixels`` only the layout: the placeholders and target sizes, no resize."""
        c = self.image_config
        divisor = patches_per_token(downsample_mode)
        strips, sizes, replacements, tokens = [], [], [], []
        for k, images in enumerate(units_per_item, start=first_id):
            text = prompt.image_id(k, self.tokens) if use_image_id else ""
            count = 0
            for image in images:
                layout = dict(max_slice_nums=max_slice_nums, scale_resolution=c["scale_resolution"],
                              patch_size=c["patch_size"], downsample_mode=downsample_mode, slice_mode=c["slice_mode"])
                if pixels:
                    s, hw, grid = slice_image(image, mean=c["image_mean"], std=c["image_std"], **layout)
                else:
                    s, (_, hw, grid) = [], slice_layout(image, **layout)
                n = [h * w // divisor for h, w in hw]
                text += prompt.unit_placeholder(pad, n, grid, self.tokens)
                strips += s
                sizes += hw
                count += sum(n)
            replacements.append(text)
            tokens.append(count)
        pixel_values = np.concatenate(strips, axis=-1)[None] if pixels else None
        return PackedVision(pixel_values, np.asarray(sizes, np.int32).reshape(-1, 2), replacements, tokens)

    def process_images(self, images, *, max_slice_nums=None, downsample_mode=None, use_image_id=None,
                       first_id: int = 0) -> PackedVision:
        """Image files or PIL images -> slices and placeholders."""
        return self.pack_images([load_image(i) for i in images], max_slice_nums=max_slice_nums,
                                downsample_mode=downsample_mode, use_image_id=use_image_id, first_id=first_id)

    def pack_images(self, images, *, max_slice_nums=None, downsample_mode=None, use_image_id=None,
                    first_id: int = 0, pixels: bool = True) -> PackedVision:
        """Images already through ``load_image`` (each decoded once) -> slices and placeholders."""
        c = self.image_config
        return self.pack(
            [[i] for i in images], self.tokens.image,
            max_slice_nums=c["max_slice_nums"] if max_slice_nums is None else check("max_slice_nums", max_slice_nums),
            downsample_mode=downsample_mode or c["downsample_mode"],
            use_image_id=c["use_image_id"] if use_image_id is None else use_image_id, first_id=first_id, pixels=pixels)

    # -- the call ---------------------------------------------------------------------------
    def __call__(self, messages, *, max_slice_nums=None, downsample_mode=None, use_image_id=None,
                 enable_thinking=False, add_generation_prompt=True, tools=None, prefix: str = "",
                 first_image_id: int = 0, first_video_id: int = 0, pixels: bool = True,
                 **video_options) -> ProcessorOutput:
        """Chat messages in the transformers form -> ``ProcessorOutput``.

        Image options mirror the reference processor; video options are ``max_num_frames``,
        ``fps``, ``stack_frames``, ``video_max_slice_nums`` and ``video_use_image_id``.
        ``prefix`` and the ``first_*_id``s continue an earlier conversation: the rendered
        ``messages`` follow ``prefix`` and number their images after the earlier ones.
        ``pixels=False`` returns the ids, spans and target sizes without resizing a pixel
        (``pixel_values*`` None): the server's look-up of a stored state needs no more, and a
        follow-up about a video whose state is stored then costs no resize of its frames.
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        text = prefix + prompt.render(self.tokenizer, self.plain.protect(messages), enable_thinking,
                                      add_generation_prompt, tools)
        out, expanded, (image_tokens, video_tokens) = self.expand_media(
            text, messages, max_slice_nums=max_slice_nums, downsample_mode=downsample_mode,
            use_image_id=use_image_id, first_image_id=first_image_id, first_video_id=first_video_id,
            pixels=pixels, **video_options)
        ids = self.plain.encode(expanded)
        out.input_ids = mx.array([ids], dtype=mx.int32)
        out.text = self.plain.restore(expanded)
        out.image_spans = _spans(ids, self.tokenizer.convert_tokens_to_ids(self.tokens.image), image_tokens)
        out.video_spans = _spans(ids, self.tokenizer.convert_tokens_to_ids(self.tokens.video), video_tokens)
        return out

    def expand_media(self, text: str, messages, *, max_slice_nums=None, downsample_mode=None, use_image_id=None,
                     first_image_id: int = 0, first_video_id: int = 0, pixels: bool = True, **video_options):
        """The images and videos of ``messages`` read and sliced, and ``text`` (the prompt
        rendered from them) with each pad expanded to its placeholder text.

        Returns the output without ``input_ids``, the expanded text (encode it with
        ``self.plain.encode``) and the placeholder tokens of each image and each video. The
        fine-tuning data (``tuner/data.py``) encodes the pieces of the text around each answer
        apart; ``__call__`` encodes it whole.
        """
        unknown = set(video_options) - set(VIDEO_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown processor options: {', '.join(sorted(unknown))}")
        max_slice_nums = check("max_slice_nums", max_slice_nums)
        v = {**VIDEO_DEFAULTS, **{k: check(k, x) for k, x in video_options.items() if x is not None}}
        mode = downsample_mode or self.image_config["downsample_mode"]
        merge_side(mode)  # a ValueError naming the modes
        items = media_items(messages)
        images = [load_image(src) for kind, src in items if kind == "image"]
        sources = [src for kind, src in items if kind == "video"]
        encoded = [src for src in sources if isinstance(src, EncodedVideo)]
        if encoded and len(encoded) != len(sources):
            raise ValueError("give either all videos of a call as EncodedVideo or none")
        videos = [] if encoded else [
            frames_as_units(src) if isinstance(src, (list, tuple)) else
            load_video_units(src, v["max_num_frames"], v["stack_frames"], v["fps"]) for src in sources]
        out = ProcessorOutput(input_ids=None, downsample_mode=mode)
        expanded = text
        if images:
            packed = self.pack_images(images, max_slice_nums=max_slice_nums, downsample_mode=mode,
                                      use_image_id=use_image_id, first_id=first_image_id, pixels=pixels)
            expanded = prompt.expand(expanded, self.tokens.image, packed.replacements)
            out.pixel_values, out.target_sizes = as_array(packed.pixel_values), mx.array(packed.target_sizes)
            image_tokens = packed.tokens
        else:
            prompt.expand(expanded, self.tokens.image, [])
            image_tokens = []
        if encoded:
            expanded = prompt.expand(expanded, self.tokens.video, [e.replacement for e in encoded])
            out.video_features = mx.concatenate([e.features for e in encoded], axis=0)
            if all(e.target_sizes is not None for e in encoded):
                out.target_sizes_videos = mx.array(np.concatenate([np.asarray(e.target_sizes) for e in encoded]))
            out.frame_times = [list(e.frame_times) for e in encoded]
            video_tokens = [e.tokens for e in encoded]
        elif videos:
            packed = self.pack([[u for u, _ in units] for units in videos], self.tokens.video,
                               max_slice_nums=v["video_max_slice_nums"], downsample_mode=mode,
                               use_image_id=v["video_use_image_id"] and VIDEO_IMAGE_IDS[self.model_type],
                               first_id=first_video_id, pixels=pixels)
            expanded = prompt.expand(expanded, self.tokens.video, packed.replacements)
            out.pixel_values_videos = as_array(packed.pixel_values)
            out.target_sizes_videos = mx.array(packed.target_sizes)
            out.frame_times = [[t for _, t in units] for units in videos]
            out.warnings = [w for units in videos for w in getattr(units, "warnings", [])]
            video_tokens = packed.tokens
        else:
            prompt.expand(expanded, self.tokens.video, [])
            video_tokens = []
        out.images, out.videos = len(images), len(sources)
        return out, expanded, (image_tokens, video_tokens)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))


def as_array(pixels: Optional[np.ndarray]) -> Optional[mx.array]:
    return None if pixels is None else mx.array(pixels)


def frames_as_units(frames) -> list:
    """A video given as frames already decoded: [(image, seconds)] or [image] -> units."""
    units = [f if isinstance(f, tuple) else (f, float(i)) for i, f in enumerate(frames)]
    if not units:
        raise ValueError("a video given as frames needs at least one frame")
    return [(load_image(image), float(t)) for image, t in units]


def _spans(ids, token_id: int, counts: List[int]) -> List[Tuple[int, int]]:
    """Token ranges [first pad, last pad + 1) of each item, given each item's pad count."""
    positions = np.flatnonzero(np.asarray(ids) == token_id)
    spans, start = [], 0
    for n in counts:
        spans.append((int(positions[start]), int(positions[start + n - 1]) + 1))
        start += n
    return spans


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
