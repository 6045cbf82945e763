"""Where does each fusion objective lead? Optimise the fused image itself, from ``max``, per pair.

A fusion network trained with a loss can at best reach that loss's optimum. This benchmark
finds each candidate objective's optimum directly: for every held-out pair (a centre crop),
start from ``F = max(ir, vis)`` and run Adam on the pixels of ``F`` to minimise the objective,
then score the 8-bit result with the standard metrics next to ``max``. An objective whose optimum
does not beat ``max`` on VIF and Qabf cannot teach a network to; one whose optimum beats it by
amplifying noise (look at the PNG) should not be shipped.

    python benchmarks/objectives.py                       # the default candidates, MSRS val + TNO
    python benchmarks/objectives.py --objective "ssim=1,qabf=1,vif=0.2" --pairs 8 --steps 80

Objectives are ``name=weight`` lists over the :class:`dfsfuse.losses.FusionLoss` terms
(``intensity`` towards max, ``gradient``, ``signed_gradient``, ``ssim``, ``qabf``, ``vif``).
Writes ``benchmarks/results/objectives.json`` and a PNG of ``max`` next to each optimum.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dfsfuse.data import PairedImages  # noqa: E402
from dfsfuse.data.shared import shared_data_root  # noqa: E402
from dfsfuse.losses import FusionLoss  # noqa: E402
from dfsfuse.metrics import MetricAccumulator, fusion_metrics  # noqa: E402

DEFAULT_DATA = shared_data_root()
DEFAULT_OBJECTIVES = (
    "intensity=1,gradient=1",          # the classic loss (magnitude gradient): its optimum is ~max
    "vif=1,qabf=1",
    "qabf=1",
    "ssim=1,qabf=1",
    "ssim=1,qabf=1,vif=0.2",
    "intensity=0.5,ssim=1,qabf=1,vif=0.2",  # the recipes' objective (a light intensity anchor added)
    "intensity=1,signed_gradient=1,ssim=1",
)
SCORED = ("EN", "SD", "SF", "AG", "VIF", "Qabf", "SSIM")


def parse_objective(text: str) -> FusionLoss:
    """``"ssim=1,qabf=1"`` → a :class:`FusionLoss` with those weights (the others 0).

    Terms: ``intensity`` (towards max), ``gradient`` (magnitude, the classic form),
    ``signed_gradient`` (stronger source edge with its sign), ``ssim``, ``qabf``, ``vif``.
    """
    weights = {"intensity": 0.0, "gradient": 0.0, "signed_gradient": 0.0, "ssim": 0.0, "qabf": 0.0, "vif": 0.0}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = item.partition("=")
        if name not in weights:
            raise ValueError(f"objective {text!r}: unknown term {name!r} (known: {', '.join(weights)})")
        weights[name] = float(value)
    if weights["gradient"] and weights["signed_gradient"]:
        raise ValueError(f"objective {text!r}: use gradient or signed_gradient, not both")
    signed = weights["signed_gradient"] > 0
    return FusionLoss(w_intensity=weights["intensity"], w_gradient=weights["signed_gradient" if signed else "gradient"],
                      w_ssim=weights["ssim"], w_qabf=weights["qabf"], w_vif=weights["vif"],
                      gradient_mode="signed" if signed else "magnitude")


def optimise(loss: FusionLoss, ir: torch.Tensor, vis: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Adam on the pixels of F (1×1×H×W in [0, 1]) from ``max(ir, vis)``; returns the optimum."""
    start = torch.maximum(ir, vis)
    delta = torch.zeros_like(start, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    for _ in range(steps):
        fused = (start + delta).clamp(0, 1)
        total = sum(loss(fused, ir, vis).values())
        opt.zero_grad()
        total.backward()
        opt.step()
    return (start + delta).detach().clamp(0, 1)


def centre_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centre ``size`` window of a 1×H×W tensor (the whole image when smaller)."""
    h, w = x.shape[-2:]
    ch, cw = min(size[0], h), min(size[1], w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every objective on every pair, print a table, write JSON and a PNG."""
    from rich.console import Console
    from rich.table import Table

    from dfsfuse.atomic import write_json_atomic
    from dfsfuse.data.io import write_image

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="root of msrs/ and tno/")
    parser.add_argument("--objective", action="append", default=None, help="name=weight,... (repeatable)")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per dataset (spread over the set)")
    parser.add_argument("--crop", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "objectives.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    objectives = args.objective or list(DEFAULT_OBJECTIVES)
    losses = {o: parse_objective(o) for o in objectives}
    sets = {"msrs_val": PairedImages(args.data / "msrs" / "val", labels=False),
            "tno": PairedImages(args.data / "tno", labels=False)}
    t0 = time.time()
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    picture: List[np.ndarray] = []
    for set_name, ds in sets.items():
        idx = np.linspace(0, len(ds) - 1, args.pairs).round().astype(int)
        acc = {m: MetricAccumulator() for m in ["max", *objectives]}
        for n, i in enumerate(idx):
            s = ds[int(i)]
            ir, vis = (torch.round(centre_crop(s[k], args.crop) * 255)[None] / 255 for k in ("ir", "vis_y"))
            a, b = ir[0, 0].numpy() * 255, vis[0, 0].numpy() * 255
            outs = {"max": torch.maximum(ir, vis)}
            outs.update({o: optimise(loss, ir, vis, args.steps, args.lr) for o, loss in losses.items()})
            for m, f in outs.items():
                acc[m].update(fusion_metrics(np.round(f[0, 0].numpy() * 255), a, b, metrics=SCORED))
            if n == 0:
                picture.append(np.concatenate([np.round(f[0, 0].numpy() * 255) for f in outs.values()], 1))
        results[set_name] = {m: {k: float(v) for k, v in a.mean().items()} for m, a in acc.items()}
    table = Table(title=f"optimum of each objective, from max ({args.pairs} pairs/set, {args.crop[0]}×{args.crop[1]} "
                        f"crops, {args.steps} Adam steps)")
    for col in ("set", "objective", *SCORED):
        table.add_column(col, justify="left" if col in ("set", "objective") else "right")
    for set_name, rows in results.items():
        for m, vals in rows.items():
            table.add_row(set_name, m, *(f"{vals[k]:.3f}" for k in SCORED))
        table.add_section()
    Console(width=max(160, Console().width)).print(table)
    doc = {"settings": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                           if k not in ("data", "json", "objective")},
                        "objectives": objectives, "torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.processor() or platform.machine(), "wall_time_s": round(time.time() - t0, 1),
                        "stretch": "none"},
           "results": results}
    write_json_atomic(args.json, doc)
    write_image(args.json.with_suffix(".png"), np.concatenate(picture, 0).clip(0, 255).astype(np.uint8))
    print(f"wrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
