"""Do the label-free (SSVIF) segmenter's classes carry information about the real MSRS classes?

Trains SSVIF stage 1 briefly (``recipes/configs/ssvif.yaml`` with a short schedule; no label is
read in training), then segments the teacher's fusion of labelled held-out pairs
(``../shared/data/msrs/val``) and scores the segmenter's clusters after Hungarian matching to
the 9 MSRS classes (:mod:`dfsfuse.metrics.clusters`), next to the same architecture at its
random initialisation (same seed, same fused images). Writes
``benchmarks/results/ssvif_clusters.json``.

    OMP_NUM_THREADS=1 python benchmarks/ssvif_clusters.py --steps 80 --warmup 20 --max-images 10
    OMP_NUM_THREADS=1 python benchmarks/ssvif_clusters.py ... loss.consistency_diversity=0  # without the anti-collapse term
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dfsfuse.data.pairs import PairedImages
from dfsfuse.data.shared import shared_data_root
from dfsfuse.metrics.clusters import cluster_confusion, match_clusters
from dfsfuse.train.config import load_config
from dfsfuse.train.stages import build_models, load_teacher, make_accelerator, train_teacher

REPO = Path(__file__).resolve().parents[1]


def score(teacher: torch.nn.Module, segmenter: torch.nn.Module, data: PairedImages, max_images: int) -> dict:
    """Hungarian-matched mIoU / pixel accuracy of ``segmenter`` on ``teacher``'s fusions, and cluster usage."""
    k = segmenter.num_classes
    conf = np.zeros((9, k), dtype=np.int64)
    teacher.eval(), segmenter.eval()
    with torch.inference_mode():
        for i in range(min(max_images, len(data))):
            s = data[i]
            fused = teacher(s["ir"][None], s["vis_y"][None]).fused
            conf += cluster_confusion(segmenter(fused).logits, s["label"][None], 9, k)
    m = match_clusters(conf)
    frac = conf.sum(axis=1) / max(conf.sum(), 1)
    present = int((frac > 0).sum())
    usage = conf.sum(axis=0) / max(conf.sum(), 1)
    used = usage[usage > 0]
    return {"miou": m.miou, "pixel_accuracy": m.pixel_accuracy, "iou": m.iou, "mapping": m.mapping,
            "cluster_usage": usage.round(4).tolist(), "clusters_used": int((usage > 0.001).sum()),
            "cluster_entropy_nats": float(-(used * np.log(used)).sum()), "max_entropy_nats": math.log(k),
            # every pixel "background" (class 0) scores IoU = its pixel share on class 0 and 0 elsewhere
            "constant_prediction_miou": float(frac.max() / present) if present else float("nan"),
            "confusion": conf.tolist()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=80, help="stage-1 steps (ssvif.yaml: 200)")
    ap.add_argument("--warmup", type=int, default=20, help="fusion-only steps first (ssvif.yaml: 60)")
    ap.add_argument("--max-images", type=int, default=10, help="labelled msrs/val pairs scored (full 480×640)")
    ap.add_argument("--val", default=str(shared_data_root() / "msrs" / "val"))
    ap.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "ssvif_clusters.json"))
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = ap.parse_args(argv)

    overrides = [f"teacher.steps={args.steps}", f"loss.consistency_warmup={args.warmup}",
                 f"teacher.warmup_steps={min(20, args.steps // 4)}", "train.checkpoint_every=100000",
                 "train.log_every=10", *args.overrides]
    cfg = load_config(REPO / "recipes" / "configs" / "ssvif.yaml", overrides)
    val = PairedImages(args.val, labels=True)
    if not val.has_labels:
        raise SystemExit(f"{args.val}: no Segmentation_labels/")
    teacher, segmenter, _ = build_models(cfg)
    _, random_segmenter, _ = build_models(cfg)  # the same seed: the trained segmenter's starting point
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        accelerator = make_accelerator(cfg, Path(tmp))
        train_teacher(accelerator, cfg, teacher, segmenter, Path(tmp))
        accelerator.end_training()
        teacher, trained = load_teacher(Path(tmp) / "teacher", torch.device("cpu"))
        log = [json.loads(line) for line in (Path(tmp) / "log.jsonl").read_text().splitlines() if line.strip()]
    train_s = time.perf_counter() - t0
    result = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/ssvif_clusters.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {"steps": args.steps, "warmup": args.warmup, "max_images": args.max_images, "val": args.val,
                     "overrides": overrides, "threads": torch.get_num_threads(),
                     "consistency": cfg.loss.consistency, "consistency_diversity": cfg.loss.consistency_diversity,
                     "consistency_confidence": cfg.loss.consistency_confidence},
        "train_seconds": round(train_s, 1),
        "last_log": log[-1] if log else None,
        "trained": score(teacher, trained, val, args.max_images),
        "random_init": score(teacher, random_segmenter, val, args.max_images),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "note": "the machine was shared with other training runs (timings are not clean)",
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("trained", "random_init"):
        r = result[name]
        print(f"{name:12s} mIoU {r['miou']:.4f} (constant prediction {r['constant_prediction_miou']:.4f})  pixel acc {r['pixel_accuracy']:.4f}  "
              f"clusters used {r['clusters_used']}  usage entropy {r['cluster_entropy_nats']:.3f}/{r['max_entropy_nats']:.3f}")
    print(f"train {train_s:.0f} s, total {result['wall_seconds']:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
