"""The errors the library raises for what a user can fix: each message names the problem and the fix.

Plain Python, no MLX: the app and the command lines catch these without loading a model.
"""


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated or of another model."""


class MediaError(ValueError):
    """An image or video that cannot be used; the message names the file, the problem and the fix."""


class ContextError(ValueError):
    """The prompt (plus the answer asked for) does not fit the model's context."""
