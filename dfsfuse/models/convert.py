"""Convert a trained fusion network to another output head without retraining.

One conversion today: ``region-contrast`` → ``region-gain``, i.e. drop the free residual ``r``.
The semantic student learns where to add IR's warm contrast through its gain map ``g`` while
training with ``r``; ``r`` carries almost all of its VIF cost but also part of its help to a
segmenter (README, Semantic benchmark), so dropping it is a choice (``dfsfuse export --head
region-gain``, the recipe's ``model.student_export_head``), not what the shipped student does.
"""

from __future__ import annotations

from torch import nn

from ..options import HEAD_CONVERSIONS as CONVERSIONS
from .blocks import head_channels


def convert_head(model: nn.Module, head: str) -> nn.Module:
    """A new network of ``model``'s architecture with output head ``head``, computing exactly what
    ``model`` computes with the maps ``head`` lacks set to zero (same weights otherwise).

    Supported: ``region-contrast`` → ``region-gain`` (drops the residual ``r``). ``model`` is left
    unchanged; the result is in eval mode. Raises ``ValueError`` for other pairs.
    """
    from .registry import create_model

    kwargs = dict(getattr(model, "arch_kwargs", None) or {})
    source = kwargs.get("head")
    if (source, head) not in CONVERSIONS:
        supported = ", ".join(f"{a} -> {b}" for a, b in CONVERSIONS)
        raise ValueError(f"cannot convert the {getattr(model, 'arch_name', type(model).__name__)} head "
                         f"{source!r} to {head!r}; supported: {supported}")
    keep = CONVERSIONS[(source, head)]
    new = create_model(model.arch_name, **{**kwargs, "head": head})
    state, target = model.state_dict(), new.state_dict()
    old_maps, new_maps = head_channels(source), head_channels(head)
    converted = {}
    for key, value in state.items():
        want = target[key].shape
        if value.shape != want:
            # The head conv: maps × cells output channels (cells > 1 for a pixel-shuffle head,
            # whose map m owns the consecutive channels m·cells … (m+1)·cells − 1).
            cells = value.shape[0] // old_maps
            if value.shape[0] != old_maps * cells or want[0] != new_maps * cells or value.shape[1:] != want[1:]:
                raise ValueError(f"{key}: shape {tuple(value.shape)} does not map to {tuple(want)}")
            value = value.view(old_maps, cells, *value.shape[1:])[list(keep)].reshape(want)
        converted[key] = value.clone()
    new.load_state_dict(converted)
    return new.eval()
