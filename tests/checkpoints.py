"""Random MiniCPM-V 4.6 and 4.7 checkpoints built with transformers itself (spec §13, §14).

No real weights are reachable from the machines this project is tested on, so the reference
implementation builds small random models that exercise every code path; the port must match
it on them. ``build_checkpoint`` writes a directory laid out like the real Hugging Face repo.
``version="4.7"`` builds ``MiniCPMV4_7ForConditionalGeneration`` (canvas M-RoPE): the same
weights plus the canvas marker ids in config.json.
"""

import json
import shutil
from pathlib import Path

# Copies of the real repo's small files (from shared/reference), so the tests need nothing outside the repo.
REFERENCE = Path(__file__).resolve().parent / "reference"

# The 50 added tokens of the real vocabulary, in id order (spec §2.6); "special" ones first
# flag. Their ids start right after the tiny base vocabulary instead of at 248044.
ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False),
    ("</tool_response>", False), ("<think>", False), ("</think>", False),
    ("<|audio_start|>", True), ("<|audio_end|>", True), ("<tts_pad>", True),
    ("<tts_text_bos>", True), ("<tts_text_eod>", True), ("<tts_text_bos_single>", True),
    ("<|audio_pad|>", True), ("<unk>", True), ("<image>", True), ("</image>", True),
    ("<ref>", True), ("</ref>", True), ("<box>", True), ("</box>", True), ("<quad>", True),
    ("</quad>", True), ("<point>", True), ("</point>", True), ("<slice>", True),
    ("</slice>", True), ("<image_id>", True), ("</image_id>", True), ("<timestamp>", True),
    ("</timestamp>", True),
]

NAMED_TOKENS = {
    "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
    "image_start_token": "<image>", "image_end_token": "</image>",
    "slice_start_token": "<slice>", "slice_end_token": "</slice>",
    "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>",
}

QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = [
    "Describe this image. What is in the picture? A cat sits on a red sofa near the window.",
    "Summarise the video: a person walks into a kitchen, opens the fridge and pours a glass of milk.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ?",
    "Compare the two images and list the differences. First, second, third; then the answer.",
    "In the first scene a car drives along a coastal road at sunset; later it rains in the city.",
    "Thinking step by step: the chart shows sales rising from 2019 to 2024, then falling.",
]


def reference_dir() -> Path:
    return REFERENCE


def build_tokenizer(vocab_size: int = 400):
    """A byte-level BPE with the real pre-tokeniser, normaliser, decoder and added tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
        extra_special_tokens=dict(NAMED_TOKENS),
        chat_template=(reference_dir() / "chat_template.jinja").read_text(),
    )


def marker_ids(tokenizer) -> dict:
    """4.7's canvas anchors, resolved from the tokenizer as the reference's converter does."""
    ids = dict(image_start_id="<image>", image_end_id="</image>", slice_start_id="<slice>", slice_end_id="</slice>")
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in ids.items()}
    (newline,) = tokenizer.encode("\n", add_special_tokens=False)
    return dict(ids, newline_id=newline)


def config_class(version: str):
    from transformers import MiniCPMV4_6Config, MiniCPMV4_7Config

    return {"4.6": MiniCPMV4_6Config, "4.7": MiniCPMV4_7Config}[version]


def tiny_config(vocab_size: int, tokenizer=None, version: str = "4.6", **overrides):
    """The spec §13 tiny config, with ``overrides`` for the vision / text parts and top level."""

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                  image_size=980, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    vision.update(overrides.pop("vision", {}))
    text = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        layer_types=["linear_attention"] * 3 + ["full_attention"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
        linear_value_head_dim=16, linear_conv_kernel_dim=4,
        rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25},
        partial_rotary_factor=0.25, rms_norm_eps=1e-6, max_position_embeddings=4096,
    )
    text.update(overrides.pop("text", {}))
    text["num_hidden_layers"] = len(text["layer_types"])
    ids = {}
    if tokenizer is not None:
        ids = dict(image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
                   video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
                   eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
        if version == "4.7":
            ids.update(marker_ids(tokenizer))
    # HF ties the head by the top-level flag; the text config's copy follows it.
    tie = overrides.pop("tie_word_embeddings", True)
    text["tie_word_embeddings"] = tie
    return config_class(version)(vision_config=vision, text_config=text, tie_word_embeddings=tie,
                                 insert_layer_id=overrides.pop("insert_layer_id", 1), **ids, **overrides)


def randomize(model, seed: int = 0):
    """Move every parameter off its init so that no block sits at an identity (spec §13)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("A_log"):
                p.copy_(torch.log(1 + 15 * torch.rand(p.shape, generator=gen)))
            elif name.endswith("dt_bias"):
                p.copy_(1 + 0.1 * n)
            elif "language_model" in name and name.endswith("norm.weight") and "linear_attn" not in name:
                p.copy_(0.1 * n)  # zero-centred RMSNorm weights
            elif p.ndim == 1 and ("norm" in name):
                p.copy_((1 + 0.1 * n) if name.endswith("weight") else 0.1 * n)
            elif p.ndim == 1:
                p.copy_(0.1 * n)  # biases
            else:
                fan_in = p[0].numel()
                p.copy_(n / fan_in**0.5)
    return model


def write_metadata(path: Path, tokenizer, config) -> None:
    ref = reference_dir()
    tokenizer.save_pretrained(path)
    shutil.copyfile(ref / "chat_template.jinja", path / "chat_template.jinja")
    preprocessor = json.loads((ref / "preprocessor_config.json").read_text())
    if config.model_type == "minicpmv4_7":
        # 4.7 reads the downsample mode from config.json, and some of its checkpoints name no
        # scale_resolution or patch_size (the class defaults apply): the processor must cope.
        preprocessor = {k: v for k, v in preprocessor.items() if k not in ("scale_resolution", "patch_size")}
        preprocessor["processor_class"] = "MiniCPMV4_7Processor"
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    gen = json.loads((ref / "generation_config.json").read_text())
    eos = [tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")]
    gen.update(bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"), eos_token_id=eos)
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))


def real_config(tokenizer, version: str = "4.6"):
    """The real 4.6 config (spec §2). No 4.7 config.json was reachable: its 1B is described
    as the same 27-layer tower and 24-layer Qwen3.5 text model at 1.55 B parameters, which is
    4.6's 1.30 B plus an untied 248094 x 1024 head, so 4.7 here is 4.6's config untied, with
    the canvas marker ids (an inference, not a copy of the real file)."""
    params = json.loads((reference_dir() / "config.json").read_text())
    # The stand-in tokenizer numbers its added tokens after its small base vocabulary.
    params["image_token_id"] = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    params["video_token_id"] = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    if version == "4.7":
        params.update(model_type="minicpmv4_7", architectures=["MiniCPMV4_7ForConditionalGeneration"],
                      tie_word_embeddings=False, **marker_ids(tokenizer))
        params.pop("drop_vision_last_layer")
        params["vision_config"] = dict(params["vision_config"], model_type="minicpmv4_7_vision")
        params["text_config"] = dict(params["text_config"], tie_word_embeddings=False)
    return config_class(version).from_dict(params)


def model_class(version: str):
    from transformers import MiniCPMV4_6ForConditionalGeneration, MiniCPMV4_7ForConditionalGeneration

    return {"4.6": MiniCPMV4_6ForConditionalGeneration, "4.7": MiniCPMV4_7ForConditionalGeneration}[version]


def build_checkpoint(path, seed: int = 0, dtype=None, real: bool = False, version: str = "4.6", **overrides):
    """Write a random checkpoint to ``path`` and return the transformers model (eval, fp32).

    ``real=True`` uses the real config (spec §14, for benchmarks and size checks).
    """
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    if real:
        config = real_config(tokenizer, version)
    else:
        config = tiny_config(len(tokenizer), tokenizer, version, **overrides)
    torch.manual_seed(seed)
    model = model_class(version)(config).eval()
    if not real:
        randomize(model, seed)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    write_metadata(path, tokenizer, config)
    return model
