"""fastpipe: stream an upstream body through a Python server without letting its owner go early."""

from ._backend import EXTENSION, Pipe, wrap
from ._errors import PipeError

__version__ = "0.1.0"

__all__ = ("EXTENSION", "Pipe", "PipeError", "__version__", "wrap")
