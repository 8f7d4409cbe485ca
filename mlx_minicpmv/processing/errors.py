class MediaError(ValueError):
    """An image or video that cannot be used; the message names the file, the problem and the fix."""
