"""Configuration dataclasses read from the Hugging Face ``config.json`` as is.

Token ids are not defaulted here: ``image_token_id`` and ``video_token_id`` (and 4.7's canvas
marker ids) must come from the checkpoint's own config (they differ between the real and the
tiny test vocabularies).
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from mlx_lm.models.base import BaseModelArgs
from mlx_lm.models.qwen3_5 import TextModelArgs

from .downsample import merge_side

# The model types this package loads. 4.7 is 4.6 plus canvas M-RoPE (model/canvas.py).
MODEL_TYPES = {"minicpmv4_6": "MiniCPM-V 4.6", "minicpmv4_7": "MiniCPM-V 4.7"}
CANVAS_MODEL_TYPES = ("minicpmv4_7",)


@dataclass
class VisionConfig(BaseModelArgs):
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 980
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    insert_layer_id: int = 6
    window_kernel_size: Tuple[int, int] = (2, 2)

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def window_size(self) -> int:
        return self.window_kernel_size[0] * self.window_kernel_size[1]


@dataclass
class TextConfig(TextModelArgs):
    # mlx-lm derives the layer kinds from ``full_attention_interval``; HF reads ``layer_types``,
    # which can be any pattern, so we keep it and let it win.
    layer_types: Optional[List[str]] = None
    # Set from the top-level model type: 4.7's attention turns with 3-D canvas positions.
    canvas_rope: bool = False

    @property
    def mrope_section(self) -> List[int]:
        """The reference's default when rope_parameters names none (4.6's real config)."""
        return list((self.rope_parameters or {}).get("mrope_section", [11, 11, 10]))

    def __post_init__(self):
        super().__post_init__()
        if self.layer_types is None:
            n = self.full_attention_interval
            self.layer_types = [
                "full_attention" if (i + 1) % n == 0 else "linear_attention"
                for i in range(self.num_hidden_layers)
            ]
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"text_config.layer_types has {len(self.layer_types)} entries "
                f"for {self.num_hidden_layers} layers"
            )


@dataclass
class ModelConfig(BaseModelArgs):
    model_type: str
    image_token_id: int
    video_token_id: int
    vision_config: VisionConfig
    text_config: TextConfig
    insert_layer_id: int = 6
    downsample_mode: str = "16x"
    merge_kernel_size: Tuple[int, int] = (2, 2)
    merger_times: int = 1
    # HF's class default: a config.json without the flag has an untied head.
    tie_word_embeddings: bool = False
    quantization: Optional[dict] = field(default=None)
    # 4.7: the tokens canvas M-RoPE is anchored on (required once images or videos come in).
    image_start_id: Optional[int] = None
    image_end_id: Optional[int] = None
    slice_start_id: Optional[int] = None
    slice_end_id: Optional[int] = None
    newline_id: Optional[int] = None

    @property
    def name(self) -> str:
        return MODEL_TYPES[self.model_type]

    @property
    def canvas_rope(self) -> bool:
        """Whether the language model takes 3-D (t, h, w) positions (4.7) or 1-D ones (4.6)."""
        return self.model_type in CANVAS_MODEL_TYPES

    @property
    def markers(self):
        """The canvas anchors as ``model.canvas.Markers``."""
        from .model.canvas import Markers

        names = ("image_start_id", "image_end_id", "slice_start_id", "slice_end_id", "newline_id")
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"config.json lacks {', '.join(missing)}, which {self.name} needs to place images and videos; "
                "convert the checkpoint again from the original Hugging Face repo"
            )
        return Markers(self.image_token_id, self.video_token_id, self.image_start_id, self.image_end_id,
                       self.slice_start_id, self.slice_end_id, self.newline_id)

    @classmethod
    def from_dict(cls, params: dict) -> "ModelConfig":
        if params.get("model_type") not in MODEL_TYPES:
            raise ValueError(
                f"config.json has model_type {params.get('model_type')!r}; this package loads only "
                + " and ".join(f"{t!r} ({name})" for t, name in MODEL_TYPES.items()) + " checkpoints"
            )
        name = MODEL_TYPES[params["model_type"]]
        for key in ("image_token_id", "video_token_id", "vision_config", "text_config"):
            if key not in params:
                raise ValueError(f"config.json lacks {key!r}; is it a complete {name} config?")
        params = dict(params)
        vision = dict(params["vision_config"])
        # HF copies the top-level insert_layer_id into the vision config; do the same.
        vision["insert_layer_id"] = params.get("insert_layer_id", vision.get("insert_layer_id", 6))
        params["vision_config"] = VisionConfig.from_dict(vision)
        # HF ties the head by the top-level flag (4.7's 1B unties it); the text model follows it.
        text = dict(params["text_config"], tie_word_embeddings=params.get("tie_word_embeddings", False),
                    canvas_rope=params["model_type"] in CANVAS_MODEL_TYPES)
        params["text_config"] = TextConfig.from_dict(text)
        config = super().from_dict(params)
        merge_side(config.downsample_mode)  # a ValueError naming the modes
        return config
