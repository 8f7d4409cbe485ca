"""Persisted settings: a dataclass read from and written to ``QSettings``."""

from dataclasses import asdict, dataclass, fields

from PySide6.QtCore import QSettings


@dataclass
class Settings:
    model_path: str = ""
    max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 1.0
    thinking: bool = False
    downsample_mode: str = "16x"  # image detail: "16x" (default) or "4x" (more tokens per image)
    max_slice_nums: int = 9
    max_frames: int = 64
    fps: float = 1.0
    system_prompt: str = ""
    appearance: str = "system"  # "system", "light" or "dark"
    serve: bool = False  # the OpenAI-compatible server on the loaded model (app/local_server.py)
    serve_port: int = 8080
    serve_key: str = ""  # required as "Authorization: Bearer KEY" when set
    adapter_path: str = ""  # fine-tuned adapters (python -m mlx_minicpmv lora) put on the model at load

    def generation_options(self) -> dict:
        return dict(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                    enable_thinking=self.thinking, downsample_mode=self.downsample_mode,
                    max_slice_nums=self.max_slice_nums, max_num_frames=self.max_frames, fps=self.fps)

    def summary_options(self) -> dict:
        """What a video summary takes of the settings: every question it asks gets the system
        prompt, the detail level and thinking, as a chat question does."""
        return dict(frames_per_segment=max(1, min(16, self.max_frames // 8)), temperature=self.temperature,
                    top_p=self.top_p, system=self.system_prompt or None, downsample_mode=self.downsample_mode,
                    enable_thinking=self.thinking)


def load_settings(store: QSettings) -> Settings:
    values = {}
    for f in fields(Settings):
        raw = store.value(f.name)
        if raw is None:
            continue
        try:
            values[f.name] = (raw in (True, "true", "1", 1)) if f.type in (bool, "bool") else type(f.default)(raw)
        except (TypeError, ValueError):
            pass  # a damaged value falls back to its default
    return Settings(**values)


def save_settings(store: QSettings, settings: Settings) -> None:
    for name, value in asdict(settings).items():
        store.setValue(name, value)
    store.sync()
