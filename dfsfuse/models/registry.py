"""Model registry, timm-style: ``register_model``, ``create_model``, ``list_models``.

Every registered model is either a ``"fusion"`` model (``forward(ir, vis_y) -> FusionOutput``,
usable as teacher or student) or a ``"segmentation"`` model (``forward(image) ->
SegmentationOutput``); :func:`model_kind` tells which. A model instance records its registry
name and its full constructor kwargs (defaults included, JSON-normalised), so
``model_from_config(model.arch_config())`` rebuilds the same architecture.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

from torch import nn

from .outputs import MODEL_KINDS, json_kwargs

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: the name, the kind (fusion/segmentation) and the builder."""

    name: str
    kind: str
    builder: Builder
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


_json_kwargs = json_kwargs  # old private name


def _check_explicit_kwargs(cls: type) -> None:
    """A registered class takes explicit keyword arguments only (so its kwargs can be recorded)."""
    signature = inspect.signature(cls.__init__)
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()):
        raise TypeError(f"{cls.__name__}.__init__ must take explicit keyword arguments only")


def register_model(
    name_or_builder: Union[str, B, None] = None, *, kind: Optional[str] = None
) -> Union[B, Callable[[B], B]]:
    """Register a model class or builder function.

    Use as ``@register_model`` (name = function/class name), ``@register_model("name")`` or
    ``@register_model("name", kind="fusion")``. ``kind`` defaults to the class attribute
    ``kind`` (set by :class:`FusionModel` / :class:`SegmentationModel`); builder functions
    must pass it.
    """

    def decorate(builder: B) -> B:
        name = name_or_builder if isinstance(name_or_builder, str) else builder.__name__
        model_kind_ = kind or getattr(builder, "kind", None)
        if model_kind_ not in MODEL_KINDS:
            raise ValueError(f"model {name!r}: kind must be one of {MODEL_KINDS}, got {model_kind_!r}")
        previous = _REGISTRY.get(name)
        if previous is not None and _qualname(previous.builder) != _qualname(builder):
            raise ValueError(f"model name {name!r} is already registered by {_qualname(previous.builder)}")
        if isinstance(builder, type):
            _check_explicit_kwargs(builder)
            builder.registry_name = name  # ArchModule.__init_subclass__ records it on instances
        doc = inspect.getdoc(builder) or ""
        _REGISTRY[name] = ModelSpec(name, model_kind_, builder, doc.split("\n\n")[0].replace("\n", " "))
        return builder

    if name_or_builder is None or isinstance(name_or_builder, str):
        return decorate
    return decorate(name_or_builder)


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; ``KeyError`` listing the known names if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def list_models(kind: Optional[str] = None) -> list[str]:
    """Sorted registered model names, optionally only those of one kind."""
    if kind is not None and kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    return sorted(name for name, spec in _REGISTRY.items() if kind is None or spec.kind == kind)


def model_kind(name: str) -> str:
    """``"fusion"`` or ``"segmentation"`` for a registered model name."""
    return get_model_spec(name).kind


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build registered model ``name`` with ``kwargs`` (JSON-serialisable values only).

    The result carries ``arch_name``, ``arch_kwargs`` and ``arch_config()``. Build on another
    device with ``with torch.device("meta"): create_model(...)``.
    """
    spec = get_model_spec(name)
    _check_kwargs(name, spec.builder, kwargs)
    model = spec.builder(**kwargs)
    if getattr(model, "arch_name", "") != name:
        # A builder function (e.g. a named variant such as ``student_w8``): the model answers to
        # the builder's name, with the full kwargs its class recorded when it has them (the
        # builder passes them through, so the config rebuilds it), else the kwargs given here.
        recorded = getattr(model, "arch_kwargs", None) if getattr(model, "arch_name", "") else None
        model.arch_name = name
        model.arch_kwargs = recorded if recorded is not None else _json_kwargs(name, kwargs)
    return model


def _check_kwargs(name: str, builder: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    """A ``ValueError`` naming the model and the keyword it does not take (not a builder's TypeError)."""
    parameters = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        known = ", ".join(parameters) or "none"
        raise ValueError(f"model {name!r} takes no argument {unknown[0]!r} (its arguments: {known})")


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from ``{"architecture": name, "kwargs": {...}}`` (``arch_config()``)."""
    if "architecture" not in config:
        raise KeyError("model config needs an 'architecture' entry")
    kwargs = dict(config.get("kwargs") or {})
    builder = get_model_spec(config["architecture"]).builder
    parameters = inspect.signature(builder).parameters
    if "head" not in kwargs and "head" in parameters:
        # Written before fusion models had a `head` kwarg (dfsfuse ≤ 0.1.0): they all used
        # the clamped residual over max(ir, vis).
        kwargs["head"] = "residual"
    if "upsample" not in kwargs and "upsample" in parameters:
        # Written before student_fast had an `upsample` kwarg: its head was a pixel shuffle.
        kwargs["upsample"] = "shuffle"
    return create_model(config["architecture"], **kwargs)
