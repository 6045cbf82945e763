"""Layers point one way: files → data → models → losses/metrics → train → export/publish.

Each module's imports (module level and inside functions) are read with ``ast`` and resolved
to ``dfsfuse.*`` names; a lower layer may never import a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dfsfuse"

# layer (a module or package under dfsfuse) → dfsfuse modules it must not import
FORBIDDEN = {
    "ops": ("data", "models", "losses", "metrics", "train", "export", "publish", "ablation", "cli", "commands"),
    "run_layout": ("data", "models", "losses", "metrics", "train", "export", "publish", "ablation", "cli", "commands",
                   "ops"),
    "models": ("losses", "metrics", "train", "export", "publish", "ablation", "cli", "commands"),
    "losses": ("models", "train", "export", "publish", "ablation", "cli", "commands"),
    "metrics": ("models", "losses", "train", "export", "publish", "ablation", "cli", "commands"),
    "train": ("publish", "ablation", "cli", "commands"),
    "publish": ("train", "ablation", "cli", "commands"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]  # `from . import x`
    return found


def _files(layer: str) -> list[Path]:
    folder = PACKAGE / layer
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{layer}.py"]


def _violations(layer: str) -> list[str]:
    bad = []
    for path in _files(layer):
        for line, module in _imports(path):
            parts = module.split(".")
            if len(parts) > 1 and parts[0] == "dfsfuse" and parts[1] in FORBIDDEN[layer]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return sorted(set(bad))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_down(layer: str) -> None:
    assert _files(layer) and all(p.is_file() for p in _files(layer))
    assert _violations(layer) == []


def test_import_resolution_sees_relative_imports() -> None:
    """The checker resolves ``from ..x import y`` (else the test above would pass vacuously)."""
    imports = {m for _, m in _imports(PACKAGE / "models" / "sspfusion.py")}
    assert "dfsfuse.ops" in imports and "dfsfuse.models.blocks" in imports
    ssvif = {m for _, m in _imports(PACKAGE / "train" / "ssvif.py")}
    assert "dfsfuse.models.segmentation" in ssvif and "dfsfuse.losses" in ssvif


def test_old_import_paths_still_work() -> None:
    from dfsfuse import ops
    from dfsfuse.losses import sobel_gradients, sobel_structure, weighted_mean
    from dfsfuse.losses.fusion import _SOBEL_X, resize_weight
    from dfsfuse.losses.structure import structure_loss, structure_magnitude
    from dfsfuse.models import FeatureSegHead
    from dfsfuse.train.ssvif import FeatureSegHead as OldHead

    assert OldHead is FeatureSegHead
    assert _SOBEL_X is ops.SOBEL_X
    assert (sobel_gradients, sobel_structure, weighted_mean, resize_weight, structure_loss, structure_magnitude) == (
        ops.sobel_gradients, ops.sobel_structure, ops.weighted_mean, ops.resize_weight, ops.structure_loss,
        ops.structure_magnitude,
    )
