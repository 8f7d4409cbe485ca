"""The app's worker on its own (its slots called directly, on the test's thread): what it hands
the library for the window's requests."""

from app.worker import GenerateRequest, ModelWorker
from tests.media import make_video


def loaded_worker(qtbot, path) -> ModelWorker:
    worker = ModelWorker()
    failed = []
    worker.failed.connect(failed.append)
    worker.load(str(path))
    assert not failed and worker.model is not None, failed
    return worker


def test_a_question_after_a_summary_gets_the_system_prompt(qtbot, tiny, tmp_path, prompts):
    worker = loaded_worker(qtbot, tiny.mlx_path)
    summaries, done, failed = [], [], []
    worker.summary_done.connect(summaries.append)
    worker.done.connect(lambda reason, stats: done.append(reason))
    worker.failed.connect(failed.append)
    video = make_video(tmp_path / "v.mp4", seconds=4, fps=5)
    worker.summarise("chat", str(video), dict(segment_seconds=2, frames_per_segment=2, max_tokens=2,
                                              scene_detection=False))
    assert summaries and not failed, failed
    prompts.clear()
    worker.generate(GenerateRequest("chat", [{"role": "user", "content": "What happens?"}],
                                    dict(max_tokens=2, temperature=0.0), system_prompt="Answer in French."))
    assert done and not failed, failed
    (given,) = prompts
    assert given.text.startswith("<|im_start|>system\nAnswer in French.<|im_end|>")
    assert given.video_features is not None, "answered from the frames the summary saw"
    # A later question in that chat: the window sends the whole history; the newest question is asked.
    prompts.clear()
    worker.generate(GenerateRequest("chat", [{"role": "user", "content": "What happens?"},
                                             {"role": "assistant", "content": "Rien."},
                                             {"role": "user", "content": "And then?"}],
                                    dict(max_tokens=2, temperature=0.0), system_prompt="Answer in French."))
    (given,) = prompts
    assert "And then?" in given.text and "What happens?" not in given.text


def test_an_exported_summary_is_the_persons_file_not_a_private_one(qtbot, tmp_path):
    """Conversations are kept 0600 (app/history.py); an export goes where the person chose and
    gets the mode any file they save has (the umask's), through the library's one writer."""
    import os
    import stat

    from tests.test_summary import hand_made_summary

    worker = ModelWorker()
    exported, failed = [], []
    worker.exported.connect(exported.append)
    worker.failed.connect(failed.append)
    out = tmp_path / "trip.md"
    old = os.umask(0o022)
    try:
        worker.export_summary(hand_made_summary(), str(out))
    finally:
        os.umask(old)
    assert exported == [str(out)] and not failed, failed
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644 and "The car" in out.read_text()


def test_switching_model_frees_the_old_models_image_features(qtbot, tiny, alt_tiny, tmp_path):
    from mlx_minicpmv.generate import feature_cache
    from tests.media import noise_image

    worker = loaded_worker(qtbot, tiny.mlx_path)
    photo = tmp_path / "photo.png"
    noise_image(200, 200, seed=5).save(photo)
    done = []
    worker.done.connect(lambda reason, stats: done.append(reason))
    worker.generate(GenerateRequest("chat", [{"role": "user", "content": [
        {"type": "image", "image": str(photo)}, {"type": "text", "text": "What is this?"}]}],
        dict(max_tokens=1, temperature=0.0)))
    old = worker.model  # still referenced (as a server's request might): the collector cannot free it
    assert done and feature_cache.held_for(old) == 1
    worker.load(str(alt_tiny.mlx_path))
    assert worker.model is not old and feature_cache.held_for(old) == 0
