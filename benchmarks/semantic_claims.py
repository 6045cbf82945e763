"""Does a fusion beat IR, VIS and ``max`` beyond the seed spread? Checks over semantic-benchmark JSONs.

Joins the JSON files of several ``dfsfuse segbench`` runs (kinds or seeds split across runs; the
protocol — steps, batch, sizes, segmenter, loss, folders — must match) and checks, for ``--subject``
against each ``--against`` kind over their common seeds (:mod:`dfsfuse.seed_claims`):

- paired: above it in every seed (the benchmark gives every kind the same seeds);
- unpaired (strict): its worst seed above the other's best;
- the mean per-seed difference and its one-sided 95% lower confidence bound (Student's t), and
  whether that bound is above zero against every kind (the reading that converges as seeds are
  added; worst-against-best gets stricter with each seed); beside it the unpaired (Welch) bound,
  the one that holds where seeds do not repeat runs (files from CUDA before session 23: noted);
- with ``--teacher``: mean mIoU at least ``--ratio`` (0.95) of the teacher's.

``--pool`` reads every segmenter of every file as an independent draw, seeds ignored: the reading for
runs whose seeds do not repeat (CUDA before session 23), where the same kind and seed in two files are
two different segmenters. It reports the strict margin and the unpaired (Welch) bound only.

``--rename FILE OLD NEW`` reads kind OLD of one result file as NEW (the same model benchmarked as a
``--model`` folder in one run and as a built-in kind in another, while an older file uses the
built-in name for another model).

::

    python benchmarks/semantic_claims.py benchmarks/results/semantic_900.json \\
        benchmarks/results/semantic_900_semantic_student.json benchmarks/results/semantic_900_seeds34.json \\
        --subject sem_student --teacher sem_teacher --json benchmarks/results/semantic_claims.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dfsfuse.atomic import write_json_atomic  # noqa: E402
from dfsfuse.seed_claims import (  # noqa: E402
    compare_kinds,
    compare_pooled,
    environment_differences,
    merge_results,
    pool_results,
    torch_threads,
    unrepeatable_runs,
)


def build_parser() -> argparse.ArgumentParser:
    """The command line (files, subject, kinds to beat, teacher, ratio, seeds, JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="segbench --json files")
    parser.add_argument("--subject", required=True, help="the kind that should win, e.g. student")
    parser.add_argument("--against", nargs="+", default=["ir", "vis", "max"], help="kinds to beat (default ir vis max)")
    parser.add_argument("--teacher", help="kind whose mean mIoU the subject must keep --ratio of")
    parser.add_argument("--ratio", type=float, default=0.95, help="share of the teacher's mIoU to keep (default 0.95)")
    parser.add_argument("--seeds", nargs="+", type=int, help="only these seeds (default: every common seed)")
    parser.add_argument("--rename", nargs=3, action="append", default=[], metavar=("FILE", "OLD", "NEW"),
                        help="read kind OLD of result FILE as NEW: one model measured under two names in "
                             "different runs (repeatable)")
    parser.add_argument("--pool", action="store_true",
                        help="every segmenter an independent draw, seeds ignored (runs whose seeds do not repeat)")
    parser.add_argument("--json", type=Path, help="write the checks here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Merge, check, print a table; 2 on unreadable or incomparable input."""
    from rich.console import Console
    from rich.table import Table

    args = build_parser().parse_args(argv)
    try:
        renames: dict = {}
        for file, old, new in args.rename:
            renames.setdefault(str(Path(file)), {})[old] = new
        docs = []
        for path in args.results:
            try:
                docs.append((str(path), json.loads(path.read_text())))
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}: cannot read a JSON result ({exc.__class__.__name__}: {exc})") from None
        if args.pool:
            if args.rename or args.seeds:
                raise ValueError("--pool reads every draw as it is: no --rename or --seeds with it")
            return _pooled(docs, args)
        per_seed, protocol = merge_results(docs, renames)
        threads = torch_threads(docs)
        differences = environment_differences(docs)
        if args.seeds:
            per_seed = {k: {s: m for s, m in v.items() if s in args.seeds} for k, v in per_seed.items()}
            per_seed = {k: v for k, v in per_seed.items() if v}
        claims = compare_kinds(per_seed, args.subject, args.against, args.teacher, args.ratio)
    except ValueError as exc:
        print(f"semantic_claims.py: error: {exc}", file=sys.stderr)
        return 2
    table = Table(title=f"{args.subject} vs other inputs, mIoU on {protocol['test_dir']} "
                        f"({protocol['steps']} steps of batch {protocol['batch_size']})")
    for column in ("vs", "seeds", "mean", "vs mean (worst..best)", "difference per seed", "paired",
                   "strict margin", "mean diff (95% low)", "unpaired 95% low"):
        table.add_column(column, justify="left" if column in ("vs", "seeds") else "right")
    for v in claims.versus:
        mean = sum(v.subject) / len(v.subject)
        other = sum(v.other) / len(v.other)
        table.add_row(v.kind, ",".join(map(str, v.seeds)), f"{mean:.4f}",
                      f"{other:.4f} ({min(v.other):.4f}..{max(v.other):.4f})",
                      f"{min(v.differences):+.4f}..{max(v.differences):+.4f}",
                      "yes" if v.paired else "no", f"{v.margin:+.4f}",
                      f"{v.mean_difference:+.4f} ({'n/a' if v.lower_bound is None else f'{v.lower_bound:+.4f}'})",
                      "n/a" if v.welch_lower_bound is None else f"{v.welch_lower_bound:+.4f}")
    console = Console(width=max(150, Console().width))
    if differences:
        what = "; ".join(f"{key} {' / '.join(map(str, values))}" for key, values in differences.items())
        console.print(f"[yellow]note: the files ran with different {what}; a seed's mIoU depends on the thread "
                      "count, the CPU's kernels and the library versions, so per-seed comparisons across them are "
                      "not like for like[/]")
    unrepeatable = unrepeatable_runs(docs)
    if unrepeatable:
        console.print(f"[yellow]note: {', '.join(unrepeatable)} trained on CUDA without deterministic kernels: a "
                      "seed there does not repeat a run (one kind, one seed, twice: 0.1698 and 0.1562), so its "
                      "seeds pair nothing; read the strict margin and the unpaired bound[/]")
    console.print(table)
    if claims.teacher:
        console.print(f"{args.subject} / {claims.teacher} mean mIoU: {claims.teacher_ratio:.1%} "
                      f"(needed {args.ratio:.0%}; worst/best seed {claims.teacher_min_ratio:.1%})")
    console.print(f"paired claim (every seed): {'holds' if claims.paired else 'fails'}; "
                  f"strict claim (ranges apart): {'holds' if claims.unpaired else 'fails'}; "
                  f"mean lead beyond seed noise (95% lower bound > 0): {'holds' if claims.bounded else 'fails'}")
    if args.json:
        record = {"files": [str(p) for p in args.results], "protocol": protocol, "torch_threads": threads,
                  "environment_differences": differences, "unrepeatable_runs": unrepeatable,
                  "seeds_filter": args.seeds, "renames": renames,
                  "miou_per_seed": {k: {str(s): m for s, m in sorted(v.items())} for k, v in per_seed.items()},
                  **claims.to_dict()}
        write_json_atomic(args.json, record)
        console.print(f"wrote {args.json}")
    return 0


def _pooled(docs: list, args: argparse.Namespace) -> int:
    """The ``--pool`` reading: a table of draws, strict margins and Welch bounds; the JSON if asked."""
    from rich.console import Console
    from rich.table import Table

    pooled, protocol = pool_results(docs)
    claims = compare_pooled(pooled, args.subject, args.against, args.teacher, args.ratio)
    table = Table(title=f"{args.subject} vs other inputs, pooled draws, mIoU on {protocol['test_dir']} "
                        f"({protocol['steps']} steps of batch {protocol['batch_size']})")
    for column in ("vs", "draws", "mean", "vs mean (worst..best)", "strict margin", "mean diff (unpaired 95% low)"):
        table.add_column(column, justify="left" if column == "vs" else "right")
    for v in claims["versus"]:
        ours, theirs = v["subject"], v["other"]
        low = "n/a" if v["welch_lower_bound"] is None else f"{v['welch_lower_bound']:+.4f}"
        table.add_row(v["kind"], f"{len(ours)} / {len(theirs)}", f"{sum(ours) / len(ours):.4f}",
                      f"{sum(theirs) / len(theirs):.4f} ({min(theirs):.4f}..{max(theirs):.4f})",
                      f"{v['margin']:+.4f}", f"{v['mean_difference']:+.4f} ({low})")
    console = Console(width=max(120, Console().width))
    console.print(table)
    if claims["teacher"]:
        console.print(f"{args.subject} / {claims['teacher']} mean mIoU: {claims['teacher_ratio']:.1%} "
                      f"(needed {args.ratio:.0%})")
    console.print(f"strict claim (ranges apart): {'holds' if claims['unpaired'] else 'fails'}; "
                  f"mean lead beyond noise (unpaired 95% lower bound > 0): {'holds' if claims['bounded'] else 'fails'}")
    if args.json:
        record = {"files": [str(p) for p in args.results], "protocol": protocol, "pooled": True,
                  "unrepeatable_runs": unrepeatable_runs(docs), "draws": pooled, **claims}
        write_json_atomic(args.json, record)
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
