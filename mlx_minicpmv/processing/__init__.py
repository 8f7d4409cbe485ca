from .errors import MediaError
from .processor import Processor, ProcessorOutput

__all__ = ["MediaError", "Processor", "ProcessorOutput"]
