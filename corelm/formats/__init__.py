"""Model file formats: GGUF and Hugging Face folders (config.json + safetensors)."""

from __future__ import annotations


class ModelFileError(ValueError):
    """A model file or folder that cannot be loaded; the message names the file and the problem."""
