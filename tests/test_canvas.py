"""MiniCPM-V 4.7's canvas positions (model/canvas.py) against transformers' get_rope_index."""

import numpy as np
import pytest

from mlx_minicpmv.downsample import merge_side
from mlx_minicpmv.model.canvas import Markers, canvas_positions, spread

# Synthetic ids: 0-99 text, then the markers (as in transformers' own 4.7 tests).
MARKERS = Markers(image_pad=100, video_pad=101, image_start=10, image_end=11, slice_start=12, slice_end=13,
                  newline=14)


@pytest.fixture(scope="module")
def reference():
    """transformers' MiniCPMV4_7Model on a tiny config, with the synthetic marker ids."""
    from transformers import MiniCPMV4_7Model

    from tests.checkpoints import tiny_config

    config = tiny_config(128, version="4.7")
    config.image_token_id, config.video_token_id = MARKERS.image_pad, MARKERS.video_pad
    config.image_start_id, config.image_end_id = MARKERS.image_start, MARKERS.image_end
    config.slice_start_id, config.slice_end_id, config.newline_id = MARKERS.slice_start, MARKERS.slice_end, MARKERS.newline
    return MiniCPMV4_7Model(config).eval()


def reference_positions(model, ids, image_sizes, video_sizes, mode):
    import torch

    ids = torch.tensor([ids])
    types = torch.where(ids == MARKERS.image_pad, 1, torch.where(ids == MARKERS.video_pad, 2, 0))
    sizes = [torch.tensor(np.asarray(s, np.int64).reshape(-1, 2)) if len(s) else None for s in (image_sizes, video_sizes)]
    positions, deltas = model.get_rope_index(ids, mm_token_type_ids=types, target_sizes=sizes[0],
                                             target_sizes_videos=sizes[1], downsample_mode=mode)
    positions = positions[:, 0].numpy()
    assert int(deltas[0, 0]) == positions.max() + 1 - ids.shape[1]
    return positions


def crop(pad, grid, merge):
    return [pad] * ((grid[0] // merge) * (grid[1] // merge))


def frame(rng, pad, merge, sizes, slices=True, same_size=True):
    """<image> thumbnail </image>, then maybe rows of <slice> ... </slice> joined by newlines."""
    thumb = tuple(int(v) * merge for v in rng.integers(1, 7, 2))
    sizes.append(thumb)
    tokens = [MARKERS.image_start, *crop(pad, thumb, merge), MARKERS.image_end]
    if slices and rng.random() < 0.6:
        rows, cols = (int(v) for v in rng.integers(1, 4, 2))
        first = tuple(int(v) * merge for v in rng.integers(1, 5, 2))
        row_tokens = []
        for r in range(rows):
            row = []
            for c in range(cols):
                grid = first if same_size or r == c == 0 else tuple(int(v) * merge for v in rng.integers(1, 5, 2))
                sizes.append(grid)
                row += [MARKERS.slice_start, *crop(pad, grid, merge), MARKERS.slice_end]
            row_tokens.append(row)
        for r, row in enumerate(row_tokens):
            tokens += ([MARKERS.newline] if r else []) + row
    return tokens


def random_prompt(seed, mode):
    """Text, images (with image ids, sliced or not), videos (frames back to back), in any order."""
    rng = np.random.default_rng(seed)
    merge = merge_side(mode)
    ids, images, videos = [], [], []
    for _ in range(int(rng.integers(1, 6))):
        kind = rng.choice(["text", "image", "video"])
        if kind == "text" or not ids and rng.random() < 0.3:
            ids += [int(t) for t in rng.integers(0, 10, int(rng.integers(1, 8)))]
        if kind == "image":
            if rng.random() < 0.5:
                ids += [20, int(rng.integers(0, 10)), 21]  # <image_id>k</image_id> is plain text
            ids += frame(rng, MARKERS.image_pad, merge, images, same_size=rng.random() < 0.7)
        elif kind == "video":
            for _ in range(int(rng.integers(1, 5))):
                ids += frame(rng, MARKERS.video_pad, merge, videos, slices=rng.random() < 0.3)
        if rng.random() < 0.5:
            ids += [int(t) for t in rng.integers(0, 10, int(rng.integers(1, 5)))]
    return ids, images, videos


@pytest.mark.parametrize("mode", ["16x", "4x"])
def test_random_prompts_equal_reference(reference, mode):
    for seed in range(150):
        ids, images, videos = random_prompt(seed, mode)
        ours = canvas_positions(ids, images, videos, MARKERS, mode)
        np.testing.assert_array_equal(ours, reference_positions(reference, ids, images, videos, mode),
                                      err_msg=f"seed {seed}")


def test_a_later_turn_continues_the_whole_conversation(reference):
    """A prompt laid out from ``start`` equals the same tokens at the end of the whole
    conversation laid out at once, even when it opens right on an image."""
    for seed in range(60):
        head, head_images, head_videos = random_prompt(seed, "16x")
        tail, tail_images, tail_videos = random_prompt(1000 + seed, "16x")
        if seed % 3 == 0:
            tail = frame(np.random.default_rng(seed), MARKERS.image_pad, 4, tail_images := []) + [3, 4]
            tail_videos = []
        head = head + [5]  # a turn ends in text (<|im_end|>): frames never join across turns
        whole = reference_positions(reference, head + tail, head_images + tail_images, head_videos + tail_videos, "16x")
        start = canvas_positions(head, head_images, head_videos, MARKERS).max() + 1
        ours = canvas_positions(tail, tail_images, tail_videos, MARKERS, start=int(start))
        np.testing.assert_array_equal(ours, whole[:, len(head):], err_msg=f"seed {seed}")


def test_text_only_is_one_dimensional():
    positions = canvas_positions([1, 2, 3, 4], None, None, MARKERS, start=7)
    assert positions.tolist() == [[7, 8, 9, 10]] * 3


def test_spread_is_torch_linspace_rounded():
    import torch

    pairs = [(extent, n) for extent in range(1, 260) for n in range(1, extent + 1)]
    pairs += [(int(e), int(n)) for e, n in np.random.default_rng(0).integers(1, 2000, (2000, 2)) if n <= e]
    for extent, n in pairs:
        expected = torch.linspace(0, extent - 1, n).round().long().numpy()
        assert spread(extent, n).tolist() == expected.tolist(), (extent, n)


@pytest.mark.parametrize("change, message", [
    (lambda images: images[:-1], "more image crops than the"),
    (lambda images: images + [(4, 4)], "image grids were given for"),
    (lambda images: [(8, 12)] + images[1:], "placeholder tokens has a 8x12 patch grid"),
])
def test_grids_that_do_not_match_the_prompt_are_named(change, message):
    ids = [1, *frame(np.random.default_rng(3), MARKERS.image_pad, 4, images := [], slices=False), 2]
    canvas_positions(ids, images, None, MARKERS)
    with pytest.raises(ValueError, match=message):
        canvas_positions(ids, change(images), None, MARKERS)


# -- the processor: MiniCPMV4_7Processor ---------------------------------------------------------
@pytest.fixture(scope="module")
def reference_processor(canvas_tiny):
    from transformers import AutoTokenizer, MiniCPMV4_7Processor
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil
    from transformers.models.minicpmv4_6.video_processing_minicpmv4_6 import MiniCPMV4_6VideoProcessor

    class ReferenceProcessor(MiniCPMV4_7Processor):
        # As in test_processor.py: without torchvision the video processor's auto-mapping is
        # a stub, so the class check is bypassed and the frames' pixels are ours (below).
        def check_argument_for_proper_class(self, argument_name, argument):
            return None

        def _process_videos(self, videos, **kwargs):
            processed = dict(self.our_videos)
            divisor = 4 if kwargs.get("downsample_mode") == "4x" else 16
            return processed, [self.replace_video_token(processed, video_idx=i, video_token_divisor=divisor)
                               for i in range(len(videos))]

    tokenizer = AutoTokenizer.from_pretrained(canvas_tiny.hf_path)
    return ReferenceProcessor(MiniCPMV4_6ImageProcessorPil(), MiniCPMV4_6VideoProcessor(), tokenizer,
                              chat_template=tokenizer.chat_template)


def with_media(conversation, images):
    """The reference takes media beside the text; ours inside the messages."""
    import copy

    out, remaining = copy.deepcopy(conversation), iter(images)
    for message in out:
        for item in message["content"] if isinstance(message["content"], list) else []:
            if item["type"] in ("image", "video"):
                item[item["type"]] = next(remaining)
    return out


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("name", ["one image", "system, two images, multi-turn", "text only"])
@pytest.mark.parametrize("mode", ["16x", "4x"])
def test_processor_equals_reference_for_images(canvas_tiny, reference_processor, name, thinking, mode):
    from tests.media import noise_image
    from tests.test_processor import CONVERSATIONS

    _, processor = canvas_tiny.load()
    conversation = CONVERSATIONS[name]
    images = [noise_image(700, 300, seed=1), noise_image(200, 200, seed=2)][: sum(
        isinstance(m["content"], list) and any(i["type"] == "image" for i in m["content"]) for m in conversation)]
    text = reference_processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True,
                                                   enable_thinking=thinking)
    ref = reference_processor(text=text, images=images or None, downsample_mode=mode, return_tensors="np")
    ours = processor(with_media(conversation, images), enable_thinking=thinking, downsample_mode=mode)
    ids = np.array(ours.input_ids)
    assert ids.tolist() == ref["input_ids"].tolist()
    assert modalities_of(canvas_tiny, ids).tolist() == ref["mm_token_type_ids"].tolist()
    if images:
        assert ours.target_sizes.shape[0] > len(images), "the wide image is sliced"
        np.testing.assert_array_equal(np.array(ours.pixel_values), ref["pixel_values"])
        np.testing.assert_array_equal(np.array(ours.target_sizes), ref["target_sizes"])


def modalities_of(tiny, ids):
    from mlx_minicpmv.config import ModelConfig
    from mlx_minicpmv.model.canvas import modalities

    return modalities(ids, ModelConfig.from_dict(tiny.hf.config.to_dict()).markers)


@pytest.mark.parametrize("use_image_id", [True, False])
def test_video_placeholders_equal_reference_and_carry_no_image_id(canvas_tiny, reference_processor, tmp_path,
                                                                  use_image_id):
    """4.7 numbers images but never videos, even when asked (4.6 numbers both)."""
    from tests.media import make_video, noise_image

    _, processor = canvas_tiny.load()
    video = make_video(tmp_path / "v.mp4", 3.0, 8, width=128, height=96)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "video"},
                                                 {"type": "text", "text": "What happens?"}]}]
    image = noise_image(700, 300, seed=4)
    ours = processor(with_media(conversation, [image, str(video)]), use_image_id=use_image_id,
                     video_use_image_id=use_image_id)
    frames = ours.target_sizes_videos.shape[0]
    reference_processor.our_videos = dict(
        pixel_values_videos=np.array(ours.pixel_values_videos), target_sizes_videos=np.array(ours.target_sizes_videos),
        num_frames_per_video=np.array([frames]), grids_videos=np.zeros((frames, 2), np.int64))
    text = reference_processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    # Ours takes the mode from config.json (4.7 keeps it there), the reference is told.
    ref = reference_processor(text=text, images=[image], videos=[[image]], use_image_id=use_image_id,
                              downsample_mode=canvas_tiny.mode, return_tensors="np")
    assert np.array(ours.input_ids).tolist() == ref["input_ids"].tolist()
    assert ours.text.count("<image_id>") == int(use_image_id)
    assert ours.frame_times == [[0.0, 1.0, 2.0]] and frames == 3


# -- the language model's rotary embedding over 3-D positions -------------------------------------
@pytest.mark.parametrize("head_dim, sections", [(32, None), (64, [4, 1, 3]), (256, None)])
def test_rotary_equals_reference_on_canvas_positions(head_dim, sections):
    import mlx.core as mx
    import torch
    from transformers import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5TextRotaryEmbedding, apply_rotary_pos_emb

    from mlx_minicpmv.model.canvas_rope import CanvasKVCache, CanvasPositions, CanvasRoPE

    rope_parameters = {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25}
    if sections:
        rope_parameters["mrope_section"] = sections
    config = Qwen3_5TextConfig(head_dim=head_dim, rope_parameters=rope_parameters)
    ids, images, videos = random_prompt(7, "16x")
    positions = canvas_positions(ids, images, videos, MARKERS, start=900)  # far enough for rounding to show
    x = np.random.default_rng(0).standard_normal((1, 2, len(ids), head_dim)).astype(np.float32)

    rope = CanvasRoPE(int(head_dim * 0.25), 1e7, sections or (11, 11, 10))
    reference = Qwen3_5TextRotaryEmbedding(config)
    inv_freq = reference.inv_freq.numpy()
    if len(inv_freq) < 16:  # torch's scalar float32 pow, as ours
        assert np.array_equal(np.array(rope._inv_freq), inv_freq)
    else:  # its vectorised pow may be an ulp or two off (2 on AVX-512): compare the rest with its frequencies
        np.testing.assert_array_max_ulp(np.array(rope._inv_freq), inv_freq, maxulp=2)
        rope._inv_freq = mx.array(inv_freq)
    cos, sin = reference(torch.from_numpy(x), torch.from_numpy(positions)[:, None])
    expected, _ = apply_rotary_pos_emb(torch.from_numpy(x), torch.from_numpy(x), cos, sin)

    table = CanvasPositions()
    table.place(5, positions)
    cache = CanvasKVCache(table)
    cache.offset = 5
    ours = np.array(rope(mx.array(x), offset=cache.offset))
    np.testing.assert_allclose(ours, expected.numpy(), atol=2e-6, rtol=0)
    assert not np.allclose(positions[0], positions[1]), "the prompt has canvas positions"


def test_positions_continue_as_text_after_the_placed_prompt():
    from mlx_minicpmv.model.canvas_rope import CanvasPositions

    ids, images, videos = random_prompt(11, "16x")
    positions = canvas_positions(ids, images, videos, MARKERS, start=4)
    table = CanvasPositions()
    table.place(4, positions)
    n = len(ids)
    np.testing.assert_array_equal(table.lookup(4, n), positions)
    after = table.lookup(4 + n, 3)
    assert after.tolist() == [list(range(positions.max() + 1, positions.max() + 4))] * 3
    assert table.next_position(4 + n) == positions.max() + 1
    with pytest.raises(ValueError, match="only move forward"):
        table.lookup(2, 1)


# -- the 4.7 model: positions in the cache, decoding, conversations -------------------------------
def placed_positions(model, cache, n):
    from mlx_minicpmv.model.canvas_rope import CanvasKVCache

    kv = next(c for c in cache if isinstance(c, CanvasKVCache))
    return kv.positions.lookup(0, n)


@pytest.mark.parametrize("case", ["text", "unsliced image", "sliced image", "two images", "video"])
def test_positions_equal_reference_for_every_case(canvas_tiny, media, case):
    import torch

    from tests.test_model import CASES, to_torch, token_types

    model, processor = canvas_tiny.load()
    inputs = processor(CASES[case](media))
    cache = model.make_cache()
    model.begin_prompt(cache, inputs.input_ids, inputs.target_sizes, inputs.target_sizes_videos, inputs.downsample_mode)
    sizes = {k: to_torch(v) if v is not None else None
             for k, v in dict(target_sizes=inputs.target_sizes, target_sizes_videos=inputs.target_sizes_videos).items()}
    ref, _ = canvas_tiny.hf.model.get_rope_index(to_torch(inputs.input_ids, torch.long), **sizes,
                                                 downsample_mode=inputs.downsample_mode,
                                                 **token_types(canvas_tiny, inputs.input_ids))
    ours = placed_positions(model, cache, inputs.num_tokens)
    np.testing.assert_array_equal(ours, ref[:, 0].numpy())
    if case != "text":
        assert (ours[1] != ours[2]).any(), "the canvas is 2-D"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from tests.test_model import media as make_media

    return make_media.__wrapped__(tmp_path_factory)


def test_canvas_positions_change_the_reference_logits(canvas_tiny, media):
    """So the logit tests above would catch a port that numbers 4.7's tokens 1-D."""
    import torch

    from tests.test_model import CASES, LOGIT_TOL, hf_logits, to_torch

    _, processor = canvas_tiny.load()
    inputs = processor(CASES["sliced image"](media))
    one_d = torch.arange(inputs.num_tokens)[None, None].expand(3, 1, -1)
    with torch.no_grad():
        flat = canvas_tiny.hf(input_ids=to_torch(inputs.input_ids, torch.long), pixel_values=to_torch(inputs.pixel_values),
                              target_sizes=to_torch(inputs.target_sizes), position_ids=one_d,
                              downsample_mode=inputs.downsample_mode).logits.numpy()
    assert np.abs(flat - hf_logits(canvas_tiny, inputs)).max() > 20 * LOGIT_TOL


@pytest.mark.parametrize("second_has_image", [False, True])
def test_a_conversation_continues_on_the_canvas(canvas_tiny, media, second_has_image):
    """Two turns through one PromptCache: the second turn's logits equal the reference run on
    the whole conversation at once (its get_rope_index over every token and image)."""
    import torch

    from mlx_minicpmv import PromptCache, stream_generate
    from tests.test_model import CASES, LOGIT_TOL, to_torch, token_types, user, text

    model, processor = canvas_tiny.load()
    cache = PromptCache.new(model)
    first = CASES["sliced image"](media)
    list(stream_generate(model, processor, first, prompt_cache=cache, max_tokens=5, temperature=0.0))
    second = (user({"type": "image", "image": str(media["tall"])}, text("And this one?")) if second_has_image
              else user(text("And the colours?")))
    follow = list(stream_generate(model, processor, second, prompt_cache=cache, max_tokens=1, temperature=0.0))

    a, b = processor(first), processor(second, **cache_continuation(processor, cache, follow))
    conversation = np.array(cache.tokens[: len(cache.tokens) - 1])[None]
    images = [x for x in (a, b) if x.target_sizes is not None]
    with torch.no_grad():
        ref = canvas_tiny.hf(
            input_ids=torch.from_numpy(conversation).long(),
            pixel_values=torch.cat([to_torch(x.pixel_values) for x in images], dim=-1),
            target_sizes=torch.cat([to_torch(x.target_sizes) for x in images]),
            downsample_mode=a.downsample_mode, **token_types(canvas_tiny, conversation)).logits[0, -1].numpy()
    ref = ref - np.logaddexp.reduce(ref)
    np.testing.assert_allclose(np.array(follow[0].logprobs), ref, atol=LOGIT_TOL, rtol=0)


def cache_continuation(processor, cache, follow):
    """The options that rendered the second turn (the cache has moved on since)."""
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    before = cache.tokens[: len(cache.tokens) - follow[-1].prompt_tokens - len(follow)]
    return dict(prefix="\n" if before[-1] == end else "<|im_end|>\n", first_image_id=1)


def test_a_stored_state_continued_by_the_whole_conversation(canvas_tiny, media):
    """The server's way: a state of the conversation's first tokens, then the whole
    conversation's ids and grids with ``fed`` (its positions laid out from the start)."""
    import mlx.core as mx

    from tests.test_model import CASES, LOGIT_TOL

    model, processor = canvas_tiny.load()
    inputs = processor(CASES["two images"](media))
    ids, L = inputs.input_ids, inputs.num_tokens
    full = model(ids, inputs.pixel_values, inputs.target_sizes)
    embeds = model.embed(ids, inputs.pixel_values, inputs.target_sizes)
    fed = int(inputs.image_spans[1][0]) + 3  # inside the second image
    cache = model.make_cache()
    model.begin_prompt(cache, ids, inputs.target_sizes)
    model(ids[:, :fed], cache=cache, input_embeddings=embeds[:, :fed])
    fresh = model.make_cache()  # a copy of the stored state that kept no positions
    for mine, theirs in zip(fresh, cache):
        mine.state = theirs.state
    model.begin_prompt(fresh, ids, inputs.target_sizes, fed=fed)
    rest = model(ids[:, fed:], cache=fresh, input_embeddings=embeds[:, fed:])
    np.testing.assert_allclose(np.array(rest), np.array(full[:, fed:]), atol=LOGIT_TOL, rtol=0)
    with pytest.raises(ValueError, match="holds 0 tokens, not the 5"):
        model.begin_prompt(model.make_cache(), ids, inputs.target_sizes, fed=5)


def test_a_summary_follow_up_places_its_frames_as_fresh_ones(canvas_tiny, tmp_path):
    """A question about a summarised video reuses the frames the summary saw (features, text
    and patch grids): the same tokens as those frames decoded and encoded afresh, at the detail
    the summary chose (not the checkpoint's own: the canvas lays frames out by it)."""
    from mlx_minicpmv.summary import follow_up, summarize
    from tests.media import make_video
    from tests.test_summary import stream_generate_frames

    model, processor = canvas_tiny.load()
    path = make_video(tmp_path / "two.mp4", seconds=6, fps=8, scenes=(0, 1))
    other = "4x" if canvas_tiny.mode == "16x" else "16x"
    result = list(summarize(model, processor, path, segment_seconds=3, frames_per_segment=2,
                            segments_per_chapter=2, max_tokens=4, downsample_mode=other))[-1].summary
    answer = [r.token for r in follow_up(model, processor, result, "What colour is the car?", max_tokens=6,
                                         temperature=0.0)]
    from mlx_minicpmv.processing.video import iter_frames, probe

    info = probe(path)
    frames = [(f.image, f.time) for f in iter_frames(path, [min(int(f.time * info.fps), info.total_num_frames - 1)
                                                           for f in result.seen], info)]
    assert answer == [r.token for r in stream_generate_frames(model, processor, frames, "What colour is the car?",
                                                              downsample_mode=other)]



def test_the_command_lines_take_a_4_7_checkpoint(request, torch_threads, media, capsys):
    """``generate`` and ``chat`` on a 4.7 checkpoint answer what the library answers (whose
    conversations the tests above hold to the reference)."""
    import json

    from mlx_minicpmv import PromptCache, generate, stream_generate
    from mlx_minicpmv.chat import run_chat
    from mlx_minicpmv.cli import user_message
    from mlx_minicpmv.generate import main as generate_main
    from tests.conftest import tiny_model

    t = tiny_model(request, "canvas")
    model, processor = t.load()
    image, video = str(media["wide"]), str(media["video"])
    code = generate_main(["--model", str(t.mlx_path), "--image", image, "--video", video, "--prompt", "Compare.",
                          "--max-tokens", "8", "--temp", "0", "--json"])
    assert code == 0
    expected = generate(model, processor, [user_message("Compare.", [image], [video])], max_tokens=8, temperature=0.0)
    assert json.loads(capsys.readouterr().out)["text"] == expected

    out = []
    lines = iter([f"/image {image}", "Describe it.", "And the colours?", "/quit"])
    run_chat(model, processor, dict(max_tokens=6, temperature=0.0), read=lambda _: next(lines),
             write=lambda *a, end="\n", **k: out.append("".join(map(str, a)) + end))
    cache = PromptCache.new(model)
    answers = ["".join(r.text for r in stream_generate(model, processor, [message], prompt_cache=cache,
                                                       max_tokens=6, temperature=0.0))
               for message in (user_message("Describe it.", [image]), user_message("And the colours?"))]
    log = "".join(out)
    assert all(answers) and f"]\n{answers[0]}\n[" in log and f"GB]\n{answers[1]}\n[" in log


def test_a_batch_of_prompts_is_each_prompt_on_its_own_canvas(request, torch_threads, media):
    """The tuner's batches: rows of images, a video and text, right-padded, their media one row
    after another. Each row's logits are those of the row alone (held to the reference above)."""
    import mlx.core as mx

    from tests.conftest import tiny_model
    from tests.test_model import CASES, our_logits

    t = tiny_model(request, "canvas")
    model, processor = t.load(cpu_kernels=False)  # the tuner's path
    rows = [processor(CASES[case](media)) for case in ("two images", "text", "video", "unsliced image")]
    pad = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = np.full((len(rows), max(r.num_tokens for r in rows)), pad)
    for b, r in enumerate(rows):
        ids[b, : r.num_tokens] = np.array(r.input_ids)[0]
    media_of = lambda key, axis: np.concatenate([np.array(getattr(r, key)) for r in rows
                                                 if getattr(r, key) is not None], axis=axis)
    batch = np.array(model(mx.array(ids), mx.array(media_of("pixel_values", -1)), media_of("target_sizes", 0),
                           pixel_values_videos=mx.array(media_of("pixel_values_videos", -1)),
                           target_sizes_videos=media_of("target_sizes_videos", 0)))
    for b, r in enumerate(rows):
        np.testing.assert_allclose(batch[b, : r.num_tokens], our_logits(model, r)[0], atol=1e-4, rtol=0)


def test_training_gradients_equal_torch_autograd(request, torch_threads, media):
    """Fine-tuning 4.7: the gradients of an image prompt's loss through our forward (the
    tuner's path, positions placed per batch) equal the reference's autograd."""
    import copy

    import mlx.core as mx
    import mlx.nn as nn
    import torch
    from mlx.utils import tree_flatten

    from tests.conftest import tiny_model
    from tests.test_model import CASES, to_torch, token_types

    t = tiny_model(request, "canvas")
    model, processor = t.load(cpu_kernels=False)
    inputs = processor(CASES["sliced image"](media))
    ids = np.array(inputs.input_ids)

    def loss(m):
        logits = m(mx.array(ids[:, :-1]), inputs.pixel_values, inputs.target_sizes)
        return nn.losses.cross_entropy(logits, mx.array(ids[:, 1:])).mean()

    ours = {k: np.array(g) for k, g in tree_flatten(nn.value_and_grad(model, loss)(model)[1])
            if k.startswith("language_model.layers.") and k.endswith("proj.weight")}
    hf = copy.deepcopy(t.hf)
    out = hf(input_ids=to_torch(ids[:, :-1], torch.long), pixel_values=to_torch(inputs.pixel_values),
             target_sizes=to_torch(inputs.target_sizes), downsample_mode=inputs.downsample_mode,
             **token_types(t, ids[:, :-1]))
    torch.nn.functional.cross_entropy(out.logits[0], to_torch(ids[0, 1:], torch.long)).backward()
    ref = {k[len("model."):]: p.grad.numpy() for k, p in hf.named_parameters() if k[len("model."):] in ours}
    assert set(ref) == set(ours) and any("self_attn" in k for k in ours)
    scale = max(np.abs(g).max() for g in ref.values())
    for k in ours:
        np.testing.assert_allclose(ours[k], ref[k], atol=1e-4 * scale, rtol=0, err_msg=k)
