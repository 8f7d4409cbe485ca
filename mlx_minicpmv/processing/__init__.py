from ..errors import MediaError
from .processor import EncodedVideo, Processor, ProcessorOutput

__all__ = ["EncodedVideo", "MediaError", "Processor", "ProcessorOutput"]
