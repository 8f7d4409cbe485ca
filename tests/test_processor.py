"""The processor against transformers' MiniCPMV4_6Processor / ImageProcessorPil / video sampling."""

import copy
import io

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from mlx_minicpmv.processing.image import load_image, slice_image
from mlx_minicpmv.processing.video import iter_frames, probe, sample_indices
from tests.media import make_video, noise_image
from tests.parity import assert_same_steps, reference_steps

# (width, height): tiny, square, around the 448 threshold, slicing grids, panoramas, huge.
SIZES = [
    (1, 1), (2, 3), (14, 14), (64, 48), (200, 200), (380, 500), (447, 448), (448, 448), (449, 449),
    (500, 380), (600, 1000), (640, 480), (700, 300), (896, 448), (1000, 600), (1024, 768), (1080, 1920),
    (1280, 720), (1344, 1008), (1500, 1500), (1920, 1080), (2000, 50), (50, 2000), (2048, 1536),
    (3000, 1000), (4000, 100), (100, 4000), (3, 5000), (5000, 3), (4032, 3024), (8000, 6000),
]


@pytest.fixture(scope="module")
def reference_image_processor():
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

    return MiniCPMV4_6ImageProcessorPil()


@pytest.mark.parametrize("mode", ["16x", "4x"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_image_slicing_equals_reference(reference_image_processor, size, mode):
    image = noise_image(*size, seed=size[0] * 7 + size[1])
    ref = reference_image_processor(image, downsample_mode=mode, return_tensors="np")
    strips, sizes, grid = slice_image(image, downsample_mode=mode)
    np.testing.assert_array_equal(np.asarray(sizes, np.int32), ref["target_sizes"])
    assert list(grid or (0, 0)) == list(ref["grids"][0])
    np.testing.assert_array_equal(np.concatenate(strips, -1)[None], ref["pixel_values"])


def test_beyond_exact_pixel_budget_is_reduced_first(reference_image_processor):
    """Past 64 MP the image is box-reduced first: same grid and token counts, pixels close."""
    image = noise_image(10000, 7000, seed=3).resize((10000, 7000), Image.BILINEAR)  # smooth, like a photo
    image = image.filter(__import__("PIL.ImageFilter", fromlist=["x"]).GaussianBlur(8))
    ref = reference_image_processor(image, return_tensors="np")
    strips, sizes, grid = slice_image(image)
    np.testing.assert_array_equal(np.asarray(sizes, np.int32), ref["target_sizes"])
    assert np.abs(np.concatenate(strips, -1)[None] - ref["pixel_values"]).mean() < 0.02


def encode(image: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    buf.seek(0)
    return buf


def exif_rotated() -> io.BytesIO:
    image = noise_image(60, 30)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    return encode(image, "JPEG", exif=exif)


def animated_gif() -> io.BytesIO:
    frames = [noise_image(40, 30, seed=i).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    buf.seek(0)
    return buf


FORMATS = {
    "grayscale": lambda: encode(noise_image(300, 200).convert("L"), "PNG"),
    "rgba": lambda: encode(noise_image(300, 200).convert("RGBA"), "PNG"),
    "palette-transparent": lambda: encode(noise_image(300, 200).convert("P"), "PNG", transparency=0),
    "cmyk-jpeg": lambda: encode(noise_image(300, 200).convert("CMYK"), "JPEG"),
    "webp": lambda: encode(noise_image(300, 200), "WEBP", lossless=True),
    "animated-gif": animated_gif,
    "exif-rotated": exif_rotated,
}


@pytest.mark.parametrize("kind", list(FORMATS))
def test_image_formats_match_reference(reference_image_processor, kind):
    from transformers.image_utils import load_image as reference_load

    ours = load_image(FORMATS[kind]())
    theirs = reference_load(Image.open(FORMATS[kind]()))  # transformers applies EXIF the same way
    ref = reference_image_processor(theirs, return_tensors="np")
    strips, sizes, _ = slice_image(ours)
    np.testing.assert_array_equal(np.asarray(sizes, np.int32), ref["target_sizes"])
    np.testing.assert_array_equal(np.concatenate(strips, -1)[None], ref["pixel_values"])
    if kind == "exif-rotated":
        assert ours.size == (30, 60)


def test_16_bit_png_is_scaled_not_clipped():
    ramp = (np.linspace(0, 65535, 64 * 32).reshape(32, 64)).astype(np.uint16)
    image = load_image(encode(Image.fromarray(ramp), "PNG"))
    values = np.asarray(image)[..., 0]
    assert image.mode == "RGB" and values.min() == 0 and values.max() == 255
    assert 100 < values.mean() < 155, "a ramp stays a ramp (clipping would make it almost all white)"


def test_one_lazily_opened_image_shared_by_threads_decodes_once(tmp_path):
    # Pillow decodes an opened file on first use; threads that did so at once got "broken data
    # stream" or a segfault. Each round opens afresh so every round races on the first decode.
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "shared.png"
    noise_image(640, 480).save(path)
    want = np.asarray(load_image(path))
    with ThreadPoolExecutor(4) as pool:
        for _ in range(8):
            shared = Image.open(path)
            got = list(pool.map(lambda _: np.asarray(load_image(shared)), range(4)))
            for pixels in got:
                np.testing.assert_array_equal(pixels, want)


def test_a_truncated_image_object_is_named_as_corrupt(tmp_path):
    from mlx_minicpmv.errors import MediaError

    path = tmp_path / "cut.png"
    noise_image(64, 64).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(MediaError, match="truncated or corrupt"):
        load_image(Image.open(path))


# -- the whole processor ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_processor(tiny):
    from transformers import AutoTokenizer, MiniCPMV4_6Processor
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil
    from transformers.models.minicpmv4_6.video_processing_minicpmv4_6 import MiniCPMV4_6VideoProcessor

    class ReferenceProcessor(MiniCPMV4_6Processor):
        # Without torchvision transformers' auto-mapping of video processors is a stub, and the
        # class check at __init__ fails on it; the video processor is never run here (the
        # PIL image processor is, and video sampling is compared on its own below).
        def check_argument_for_proper_class(self, argument_name, argument):
            return None

    tokenizer = AutoTokenizer.from_pretrained(tiny.hf_path)
    return ReferenceProcessor(MiniCPMV4_6ImageProcessorPil(), MiniCPMV4_6VideoProcessor(), tokenizer,
                              chat_template=tokenizer.chat_template)


CONVERSATIONS = {
    "one image": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
    "system, two images, multi-turn": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A cat on a sofa."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare the two."}]},
    ],
    "text only": [{"role": "user", "content": "The quick brown fox?"}],
}


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("mode", ["16x", "4x"])
def test_processor_equals_reference(tiny, reference_processor, name, thinking, mode):
    _, processor = tiny.load()
    conversation = CONVERSATIONS[name]
    n_images = sum(isinstance(m["content"], list) and any(i["type"] == "image" for i in m["content"])
                   for m in conversation)
    images = [noise_image(700, 300, seed=1), noise_image(200, 200, seed=2)][:n_images]
    ours_msgs, remaining = copy.deepcopy(conversation), iter(images)
    for message in ours_msgs:  # the reference takes images beside the text, ours inside the messages
        for item in message["content"] if isinstance(message["content"], list) else []:
            if item["type"] == "image":
                item["image"] = next(remaining)
    text = reference_processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True,
                                                   enable_thinking=thinking)
    ref = reference_processor(text=text, images=images or None, downsample_mode=mode, return_tensors="np")
    ours = processor(ours_msgs, enable_thinking=thinking, downsample_mode=mode)
    assert np.array(ours.input_ids).tolist() == ref["input_ids"].tolist()
    if images:
        np.testing.assert_array_equal(np.array(ours.pixel_values), ref["pixel_values"])
        np.testing.assert_array_equal(np.array(ours.target_sizes), ref["target_sizes"])
        assert len(ours.image_spans) == len(images)


@pytest.mark.parametrize("codec,seconds,fps,vfr", [
    ("libx264", 3.3, 10, False), ("mpeg4", 5.0, 25, False), ("libx264", 4.0, 12, True),
    ("mpeg4", 2.5, 7, True), ("mpeg4", 12.0, 30, False),
    ("mpeg4", 24.0, 10, False),  # with max 4 frames the gaps are long enough that the decoder seeks
])
@pytest.mark.parametrize("stack", [1, 3])
def test_video_sampling_equals_reference(tmp_path, codec, seconds, fps, vfr, stack):
    from transformers.models.minicpmv4_6.video_processing_minicpmv4_6 import MiniCPMV4_6VideoProcessor
    from transformers.video_utils import read_video_pyav

    path = make_video(tmp_path / f"v.mp4", seconds, fps, codec=codec, vfr=vfr)
    reference = MiniCPMV4_6VideoProcessor()
    info = probe(path)
    for max_frames in (128, 4):  # 4: the long-video path (uniform frames over 0.1 s steps)
        main, sub, _ = sample_indices(info, max_num_frames=max_frames, stack_frames=stack)
        ref_frames, meta = read_video_pyav(
            str(path), lambda metadata, **kw: sorted(reference.sample_frames(metadata, max_frames, stack)))
        assert (info.total_num_frames, info.fps) == (meta.total_num_frames, meta.fps)
        assert main + sub == reference.sample_frames(meta, max_frames, stack)
    # The decoded frames are the reference decoder's, pixel for pixel.
    wanted = sorted(set(main + sub))
    ours = [np.asarray(f.image) for f in iter_frames(path, wanted)]
    ref = read_video_pyav(str(path), lambda metadata, **kw: wanted)[0]
    assert len(ours) == len(wanted) == len(ref)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)


def test_frame_times_and_placeholders(tiny, tmp_path):
    _, processor = tiny.load()
    path = make_video(tmp_path / "v.mp4", 4.0, 10)
    out = processor([{"role": "user", "content": [{"type": "video", "video": str(path)},
                                                  {"type": "text", "text": "What happens?"}]}])
    assert out.frame_times == [[0.0, 1.0, 2.0, 3.0]]
    assert out.target_sizes_videos.shape[0] == 4  # one slice per frame (model card's video setting)
    assert "<image_id>" not in out.text and out.text.count("<image>") == 4
    assert len(out.video_spans) == 1


def test_placeholders_without_pixels_are_the_same(tiny, tmp_path):
    """pixels=False (the server's look-up of a stored state): the same ids, spans and target
    sizes as the whole call, for a sliced image and a video, and no pixels."""
    _, processor = tiny.load()
    path = make_video(tmp_path / "v.mp4", 3.0, 10)
    messages = [{"role": "user", "content": [{"type": "image", "image": noise_image(1344, 1008, seed=3)},
                                             {"type": "video", "video": str(path)},
                                             {"type": "text", "text": "Compare them."}]}]
    whole, layout = processor(messages), processor(messages, pixels=False)
    assert whole.input_ids.tolist() == layout.input_ids.tolist() and whole.text == layout.text
    assert (whole.image_spans, whole.video_spans) == (layout.image_spans, layout.video_spans)
    assert whole.target_sizes.tolist() == layout.target_sizes.tolist() and whole.target_sizes.shape[0] > 1
    assert whole.target_sizes_videos.tolist() == layout.target_sizes_videos.tolist()
    assert layout.pixel_values is None and layout.pixel_values_videos is None and whole.pixel_values is not None


def test_end_to_end_image_question_equals_reference_generate(tiny, reference_processor):
    from mlx_minicpmv.generate import stream_tokens

    model, processor = tiny.load()
    image = noise_image(700, 300, seed=81)
    conversation = CONVERSATIONS["one image"]
    text = reference_processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    ref_inputs = reference_processor(text=text, images=[image], return_tensors="pt")
    ref = reference_steps(tiny, max_new_tokens=24, **ref_inputs)
    inputs = processor([{"role": "user", "content": [{"type": "image", "image": image},
                                                     {"type": "text", "text": "Describe this image."}]}])
    assert_same_steps(list(stream_tokens(model, inputs, max_tokens=24, temperature=0.0)), *ref)


def test_end_to_end_video_question_equals_reference_generate(tiny, tmp_path):
    """The reference gets our pixels here (its video processor needs torchvision: the
    ``torchvision`` run, tests/test_video_reference.py, compares those)."""
    import torch

    from mlx_minicpmv.generate import stream_tokens

    model, processor = tiny.load()
    path = make_video(tmp_path / "v.mp4", 3.0, 8, width=128, height=96)
    inputs = processor([{"role": "user", "content": [{"type": "video", "video": str(path)},
                                                     {"type": "text", "text": "Summarise the video."}]}])
    ref = reference_steps(tiny, max_new_tokens=24, input_ids=torch.tensor(np.array(inputs.input_ids)).long(),
                          pixel_values_videos=torch.tensor(np.array(inputs.pixel_values_videos)),
                          target_sizes_videos=torch.tensor(np.array(inputs.target_sizes_videos)))
    assert_same_steps(list(stream_tokens(model, inputs, max_tokens=24, temperature=0.0)), *ref)


def test_template_renders_videos_like_reference(tiny, reference_processor):
    _, processor = tiny.load()
    conversation = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "video", "video": "a.mp4"}, {"type": "text", "text": "What happens?"}]},
        {"role": "assistant", "content": "A car drives by."},
        {"role": "user", "content": [{"type": "image", "image": "b.png"}, {"type": "video", "video": "c.mp4"},
                                     {"type": "text", "text": "And here?"}]},
    ]
    from mlx_minicpmv.processing import prompt

    for thinking in (False, True):
        ours = prompt.render(processor.tokenizer, conversation, enable_thinking=thinking)
        ref = reference_processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=thinking)
        assert ours == ref
        assert ours.count("<|video_pad|>") == 2 and ours.count("<|image_pad|>") == 1
        assert ours.endswith("<think>\n" if thinking else "<think>\n\n</think>\n\n")


def test_huge_jpeg_is_decoded_reduced_with_the_reference_plan(reference_image_processor, tmp_path):
    """A 12000x9000 JPEG (108 MP) decodes at reduced scale; grid and token counts stay the
    reference's (planned on the full size) and the pixels stay close."""
    from PIL import ImageFilter

    path = tmp_path / "huge.jpg"
    big = noise_image(1200, 900, seed=5).resize((12000, 9000), Image.BILINEAR).filter(ImageFilter.GaussianBlur(4))
    big.save(path, quality=90)
    ref = reference_image_processor(Image.open(path).convert("RGB"), return_tensors="np")
    del big
    image = load_image(path)
    # decoded by libjpeg at a reduced scale: the 324 MB full-size bitmap never exists
    assert image.size == (12000 // 4, 9000 // 4) and image.info["original_size"] == (12000, 9000)
    strips, sizes, _ = slice_image(image)
    np.testing.assert_array_equal(np.asarray(sizes, np.int32), ref["target_sizes"])
    assert np.abs(np.concatenate(strips, -1)[None] - ref["pixel_values"]).mean() < 0.02


def test_a_panorama_jpeg_past_the_pixel_budget_opens_at_half_scale(tmp_path):
    """22000x3000 (66 MP) is over the 64 MP a bitmap may take but leaves room for the slicer
    at 1/2: it opens at half size, not refused as a decompression bomb."""
    path = tmp_path / "panorama.jpg"
    Image.new("RGB", (22000, 3000), (90, 140, 200)).save(path, quality=50)
    image = load_image(path)
    assert image.size == (11000, 1500) and image.info["original_size"] == (22000, 3000)


@pytest.mark.parametrize("size,canvas", [((64, 48), (64, 102)), ((48, 64), (102, 64)), ((22, 30), (22, 66))],
                         ids=["wide", "tall", "tied"])
def test_two_frames_of_a_second_share_the_squarer_canvas(size, canvas):
    """Two sub-frames of a second go side by side or one above the other, whichever canvas is
    closer to square, with a 6 px black line between; 22x30 frames tie, and are stacked, as
    in the reference (tests/test_video_reference.py compares with it where torchvision runs)."""
    from mlx_minicpmv.processing.video import stack_canvas

    out = np.asarray(stack_canvas([Image.new("RGB", size, (255, 0, 0)), Image.new("RGB", size, (0, 0, 255))]))
    width, height = size
    assert (out.shape[1], out.shape[0]) == canvas
    assert (out[:height, :width] == (255, 0, 0)).all()
    line, second = (out[:, width:width + 6], out[:, width + 6:]) if canvas[0] > width else \
        (out[height:height + 6], out[height + 6:])
    assert (line == 0).all() and (second == (0, 0, 255)).all()


def test_rotated_phone_video_is_turned_upright(tmp_path):
    """A portrait phone video: landscape frames plus a 'rotate 90° clockwise' display matrix."""
    import av

    from tests.media import rotate_for_display

    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        for _ in range(5):
            frame = np.zeros((32, 64, 3), np.uint8)
            frame[:8, :8] = (255, 0, 0)  # a red mark in the top-left corner of the stored frame
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    rotate_for_display(path, 90)
    image = np.asarray(next(iter_frames(path, [0])).image)
    assert image.shape[:2] == (64, 32), "shown in portrait"
    assert image[:8, -8:, 0].mean() > 200 and image[:8, :8, 0].mean() < 60, "top-left went to top-right"
