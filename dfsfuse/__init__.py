"""dfsfuse: distil a frequency-aware IR/visible fusion teacher into a compact CNN student."""

__all__ = ["__version__", "from_pretrained"]


def __getattr__(name: str) -> str:
    """``__version__``, looked up on first use (importlib.metadata costs ~40 ms at start-up)."""
    if name != "__version__":
        raise AttributeError(f"module 'dfsfuse' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("dfsfuse")
    except PackageNotFoundError:  # running from a source tree that was never installed
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value


def from_pretrained(path_or_hub_id, device="cpu", **kwargs):
    """Load a model saved with :func:`dfsfuse.export.save_pretrained` (safetensors + config.json)."""
    from .export import from_pretrained as _from_pretrained

    return _from_pretrained(path_or_hub_id, device=device, **kwargs)
