"""Configuration dataclasses read from the Hugging Face ``config.json`` as is.

Token ids are not defaulted here: ``image_token_id`` and ``video_token_id`` must come from
the checkpoint's own config (they differ between the real and the tiny test vocabularies).
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from mlx_lm.models.base import BaseModelArgs
from mlx_lm.models.qwen3_5 import TextModelArgs

MODEL_TYPE = "minicpmv4_6"


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
    tie_word_embeddings: bool = True
    quantization: Optional[dict] = field(default=None)

    @classmethod
    def from_dict(cls, params: dict) -> "ModelConfig":
        if params.get("model_type") != MODEL_TYPE:
            raise ValueError(
                f"config.json has model_type {params.get('model_type')!r}; "
                f"this package loads only {MODEL_TYPE!r} (MiniCPM-V 4.6) checkpoints"
            )
        for key in ("image_token_id", "video_token_id", "vision_config", "text_config"):
            if key not in params:
                raise ValueError(f"config.json lacks {key!r}; is it a complete MiniCPM-V 4.6 config?")
        params = dict(params)
        vision = dict(params["vision_config"])
        # HF copies the top-level insert_layer_id into the vision config; do the same.
        vision["insert_layer_id"] = params.get("insert_layer_id", vision.get("insert_layer_id", 6))
        params["vision_config"] = VisionConfig.from_dict(vision)
        params["text_config"] = TextConfig.from_dict(params["text_config"])
        config = super().from_dict(params)
        if config.downsample_mode not in ("16x", "4x"):
            raise ValueError(f"downsample_mode must be '16x' or '4x', got {config.downsample_mode!r}")
        return config
