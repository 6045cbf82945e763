"""SSPFusion's self-supervised structure loss: Sobel structural signals and their alignment.

The operators live in :mod:`dfsfuse.ops` (models use them too); this module keeps the old
import path ``dfsfuse.losses.structure``. A fusion network that produces structural signals
from its features is trained so that they match the Sobel structure of its inputs
(:func:`structure_loss`): the features then keep every edge of the source images.
"""

from __future__ import annotations

from ..ops import sobel_structure, structure_loss, structure_magnitude

__all__ = ["sobel_structure", "structure_loss", "structure_magnitude"]
