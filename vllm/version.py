"""The package version, where vLLM keeps it (``vllm.version.__version__``)."""

from vllm import __version__

__all__ = ["__version__"]
