"""dfsfuse: distil a frequency-aware IR/visible fusion teacher into a compact CNN student."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("dfsfuse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "from_pretrained"]


def from_pretrained(path_or_hub_id, device="cpu", **kwargs):
    """Load a model saved with :func:`dfsfuse.export.save_pretrained` (safetensors + config.json)."""
    from .export import from_pretrained as _from_pretrained

    return _from_pretrained(path_or_hub_id, device=device, **kwargs)
