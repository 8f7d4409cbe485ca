"""Video pixels against transformers' own ``MiniCPMV4_6VideoProcessor``: resizing, normalisation
and the stacked-frame composite (spec §9).

That processor needs torchvision, which does not install beside the default suite's torch
2.13 here, so these tests are marked ``torchvision`` and left out of the default run; run them
with ``scripts/test_torchvision.sh`` (its own venv: torch 2.14.1, torchvision 0.29.1).
"""

import numpy as np
import pytest

from mlx_minicpmv.processing.video import iter_frames, probe, sample_indices, stack_canvas
from tests.media import make_video, noise_image

pytestmark = pytest.mark.torchvision


@pytest.fixture(scope="module")
def reference():
    from transformers.models.minicpmv4_6.video_processing_minicpmv4_6 import MiniCPMV4_6VideoProcessor

    return MiniCPMV4_6VideoProcessor()


def reference_inputs(reference, path, stack: int, mode: str):
    """The reference run on the frames it would sample itself (decoded by our decoder, which
    test_processor.py shows is the reference's pixel for pixel)."""
    from transformers.video_utils import VideoMetadata

    info = probe(path)
    main, sub, _ = sample_indices(info, 128, stack)
    frames = {f.index: np.asarray(f.image) for f in iter_frames(path, sorted(set(main + sub)))}
    video = np.stack([frames[i] for i in main + sub])
    metadata = VideoMetadata(total_num_frames=info.total_num_frames, fps=info.fps, duration=info.duration,
                             frames_indices=main + sub)
    return reference(videos=[video], video_metadata=[metadata], do_sample_frames=False, stack_frames=stack,
                     max_slice_nums=1, downsample_mode=mode, return_tensors="np")


@pytest.mark.parametrize("mode", ["16x", "4x"])
@pytest.mark.parametrize("stack", [1, 3])
@pytest.mark.parametrize("size", [(96, 64), (640, 360), (360, 640)], ids=["small", "landscape", "portrait"])
def test_video_pixels_match_reference(tiny, reference, tmp_path, size, stack, mode):
    _, processor = tiny.load()
    path = make_video(tmp_path / "v.mp4", 3.3, 10, width=size[0], height=size[1])
    ref = reference_inputs(reference, path, stack, mode)
    ours = processor([{"role": "user", "content": [{"type": "video", "video": str(path)},
                                                   {"type": "text", "text": "What happens?"}]}],
                     downsample_mode=mode, stack_frames=stack)
    np.testing.assert_array_equal(np.array(ours.target_sizes_videos), ref["target_sizes_videos"])
    pixels, ref_pixels = np.array(ours.pixel_values_videos), ref["pixel_values_videos"]
    assert pixels.shape == ref_pixels.shape
    # The reference resizes with torchvision's bicubic, ours with Pillow's (as its image
    # processor does): a few pixels differ by 2-6 levels of 255 (seen: max 0.047, mean 7e-5 in
    # normalised units); a wrong filter, size or normalisation moves the mean by 1e-2 or more.
    diff = np.abs(pixels - ref_pixels)
    assert diff.max() < 0.05 and diff.mean() < 2e-4, (diff.max(), diff.mean())


@pytest.mark.parametrize("count", [2, 3, 4])
@pytest.mark.parametrize("size", [(64, 48), (48, 64), (40, 40)], ids=["wide", "tall", "square"])
def test_stacked_frames_composite_equals_reference(reference, count, size):
    import torch

    frames = [noise_image(*size, seed=i) for i in range(count)]
    ours = np.asarray(stack_canvas(frames))
    video = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(0, 3, 1, 2).contiguous()
    ref = reference.concat_frames_as_image(video)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, ref)
