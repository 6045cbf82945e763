"""Does "A beats B" hold beyond the seed spread? Paired and unpaired checks on semantic-benchmark results.

The semantic benchmark trains one segmenter per input kind and seed, and a seed fixes the initial
weights, the data order and every crop for *every* kind. Most of the spread between seeds is
therefore shared by all kinds (measured: seed 0 is the best seed of VIS, ``max`` and every fusion at
900 steps, through the rare classes bump and bike), so two claims are worth reporting:

- **paired**: the subject beats the other kind in every seed (the smallest per-seed difference is
  above zero), the comparison the protocol's shared seeds are designed for;
- **unpaired (strict)**: the subject's worst seed is above the other kind's best seed, which also
  holds when the seeds share nothing.

Each comparison also carries the one-sided 95% lower confidence bound of the mean per-seed
difference (Student's t over the shared seeds): above zero, the subject's mean is ahead by more
than seed noise explains, the usual test for paired runs; it is reported next to the two claims,
with the unpaired (Welch) bound of the difference of the means beside it — the one to read when a
seed does not repeat a run, as on CUDA before ``segbench`` trained under deterministic kernels
(:func:`unrepeatable_runs` names such files).

:func:`merge_results` joins the JSON files of several ``dfsfuse segbench`` runs (kinds or seeds
split across runs) after checking that they used the same protocol; :func:`compare_kinds` makes the
checks. ``benchmarks/semantic_claims.py`` is the command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

# Settings that change what a segmenter learns: results that differ in any of them are not comparable.
PROTOCOL_KEYS: Tuple[str, ...] = ("size", "crop", "steps", "batch_size", "lr", "weight_decay", "warmup_steps",
                                  "segmenter", "seg_loss", "hflip", "ema", "class_crops", "color", "test_dir",
                                  "train_dir")
# Defaults of settings that older result files do not record.
_MISSING = {"ema": 0.0, "class_crops": 0.0, "color": False}

PerSeed = Dict[str, Dict[int, float]]

# One-sided 95% quantiles of Student's t, degrees of freedom 1..30 (standard tables; checked in the
# tests against a numerical integration of the density). Beyond 30 the normal quantile.
T95_ONE_SIDED: Tuple[float, ...] = (
    6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812,
    1.796, 1.782, 1.771, 1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725,
    1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699, 1.697)


def mean_lower_bound(values: Sequence[float]) -> Optional[float]:
    """One-sided 95% lower confidence bound of the mean of ``values`` (Student's t); ``None`` for
    fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    x = np.asarray(values, dtype=np.float64)
    t = T95_ONE_SIDED[n - 2] if n - 1 <= len(T95_ONE_SIDED) else 1.645
    return float(x.mean() - t * x.std(ddof=1) / np.sqrt(n))


def welch_lower_bound(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """One-sided 95% lower confidence bound of ``mean(a) − mean(b)`` for independent samples (Welch's t,
    the degrees of freedom rounded down: conservative); ``None`` when either has fewer than two values."""
    if len(a) < 2 or len(b) < 2:
        return None
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = float(np.sqrt(va + vb))
    diff = float(x.mean() - y.mean())
    if se == 0.0:
        return diff
    df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    k = max(1, int(np.floor(df)))
    t = T95_ONE_SIDED[k - 1] if k <= len(T95_ONE_SIDED) else 1.645
    return diff - t * se


def unrepeatable_runs(docs: Sequence[Tuple[str, Mapping[str, Any]]]) -> List[str]:
    """Names of the documents whose segmenters trained on CUDA without ``cuda_determinism`` (recorded
    in their settings since session 23): there the same seed gave 0.1698 and 0.1562 mIoU for one kind,
    so their seeds pair nothing and only the unpaired readings hold."""
    out = []
    for name, doc in docs:
        settings = doc.get("settings") or {}
        if str(settings.get("device", "cpu")).startswith("cuda") and not settings.get("cuda_determinism"):
            out.append(name)
    return out


def per_seed_miou(doc: Mapping[str, Any]) -> PerSeed:
    """``{kind: {seed: mIoU}}`` of one ``segbench --json`` document (one seed or several)."""
    seeds = [int(s) for s in doc.get("seeds") or []]
    if not seeds:
        raise ValueError("no seeds: a --quick result has nothing to compare over seeds")
    many = doc.get("miou_per_seed")
    out: PerSeed = {}
    for kind, mean in doc["miou"].items():
        values = many[kind] if many else [mean]
        if len(values) != len(seeds):
            raise ValueError(f"kind {kind!r} has {len(values)} mIoU values for {len(seeds)} seeds")
        out[kind] = {s: float(v) for s, v in zip(seeds, values)}
    return out


def _protocol(doc: Mapping[str, Any]) -> Dict[str, Any]:
    settings = doc.get("settings") or {}
    out = {}
    for key in PROTOCOL_KEYS:
        value = settings.get(key, _MISSING.get(key))
        if value is not None and key.endswith("_dir"):
            value = Path(str(value)).name  # the folder, not where it was mounted
        out[key] = value
    return out


def torch_threads(docs: Sequence[Tuple[str, Mapping[str, Any]]]) -> Dict[str, Optional[int]]:
    """``{name: torch threads per segmenter}`` of ``(name, segbench JSON)`` documents (None where not recorded).

    Not part of :data:`PROTOCOL_KEYS` (older files mixed thread counts and record none), but a seed's
    numbers depend on it: the summation order changes, and 900 steps amplify that into seed-sized
    differences. Callers should say so when the documents differ.
    """
    out: Dict[str, Optional[int]] = {}
    for name, doc in docs:
        value = (doc.get("settings") or {}).get("torch_threads")
        out[name] = int(value) if value is not None else None
    return out


# Recorded settings that decide a seed's numbers without being protocol: the same protocol and seed give
# different mIoU with another thread count, another CPU kernel set (torch's cpu_capability; two machines
# sold under one model name can differ) or another torch / timm (initial weights). Older files record
# only some of them.
ENVIRONMENT_KEYS: Tuple[str, ...] = ("torch_threads", "cpu_capability", "torch", "timm")


def environment_differences(docs: Sequence[Tuple[str, Mapping[str, Any]]]) -> Dict[str, List[Any]]:
    """``{key: [the distinct values]}`` of each :data:`ENVIRONMENT_KEYS` entry that the documents
    record with more than one value (documents that do not record a key are left out of it): where
    per-seed comparisons across the files are not like for like."""
    out: Dict[str, List[Any]] = {}
    for key in ENVIRONMENT_KEYS:
        values = []
        for _, doc in docs:
            value = (doc.get("settings") or {}).get(key)
            if value is not None and value not in values:
                values.append(value)
        if len(values) > 1:
            out[key] = values
    return out


def _same_protocol_rows(docs: Sequence[Tuple[str, Mapping[str, Any]]],
                        verb: str) -> Tuple[Dict[str, Any], List[Tuple[str, PerSeed]]]:
    """The first document's protocol and ``(name, per_seed_miou)`` of every document; ``ValueError`` naming
    the file when there is none to ``verb``, a protocol differs from the first one's, or a file is unreadable."""
    if not docs:
        raise ValueError(f"no results to {verb}")
    first_name, first = docs[0]
    protocol = _protocol(first)
    out = []
    for name, doc in docs:
        theirs = _protocol(doc)
        for key in PROTOCOL_KEYS:
            if theirs[key] != protocol[key]:
                raise ValueError(f"{name}: {key} is {theirs[key]!r}, {first_name} has {protocol[key]!r}; "
                                 "results of different protocols are not comparable")
        try:
            out.append((name, per_seed_miou(doc)))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{name}: {exc}") from None
    return protocol, out


def merge_results(docs: Sequence[Tuple[str, Mapping[str, Any]]],
                  renames: Optional[Mapping[str, Mapping[str, str]]] = None) -> Tuple[PerSeed, Dict[str, Any]]:
    """Join ``(name, segbench JSON)`` documents into ``{kind: {seed: mIoU}}`` and their shared protocol.

    ``renames`` maps a document's name to ``{kind in that document: name to merge it under}``: one
    model measured under two names in different runs (a ``--model`` folder that later became a
    built-in kind whose name an older file uses for another model).
    Raises ``ValueError`` naming the file when a document's protocol differs from the first one's,
    when two documents hold the same kind and seed with different numbers, or when a rename names
    a document that is not given or a kind that document does not hold.
    """
    renames = dict(renames or {})
    unknown = sorted(set(renames) - {name for name, _ in docs})
    if unknown:
        raise ValueError(f"{unknown[0]}: renamed kinds in a file that is not among the results")
    protocol, documents = _same_protocol_rows(docs, "merge")
    merged: PerSeed = {}
    where: Dict[Tuple[str, int], str] = {}
    for name, rows in documents:
        rename = renames.get(name, {})
        missing = sorted(set(rename) - set(rows))
        if missing:
            raise ValueError(f"{name}: no kind {missing[0]!r} to rename (it holds {', '.join(sorted(rows))})")
        for kind, values in rows.items():
            kind = rename.get(kind, kind)
            for seed, miou in values.items():
                known = merged.setdefault(kind, {}).get(seed)
                if known is not None and abs(known - miou) > 1e-12:
                    raise ValueError(f"{name}: {kind} seed {seed} is {miou:.4f}, {where[(kind, seed)]} has "
                                     f"{known:.4f}; keep one of them")
                merged[kind][seed] = miou
                where.setdefault((kind, seed), name)
    return merged, protocol


@dataclass
class Versus:
    """The subject against one other kind over their common seeds."""

    kind: str
    seeds: List[int]
    subject: List[float]
    other: List[float]
    differences: List[float] = field(init=False)
    paired: bool = field(init=False)
    unpaired: bool = field(init=False)
    margin: float = field(init=False)
    mean_difference: float = field(init=False)
    lower_bound: Optional[float] = field(init=False)   # one-sided 95% bound of the mean difference
    bounded: bool = field(init=False)                  # that bound exists (2+ seeds) and is above zero
    welch_lower_bound: Optional[float] = field(init=False)  # the same bound without pairing the seeds

    def __post_init__(self) -> None:
        self.differences = [a - b for a, b in zip(self.subject, self.other)]
        self.mean_difference = float(np.mean(self.differences))
        self.lower_bound = mean_lower_bound(self.differences)
        self.bounded = self.lower_bound is not None and self.lower_bound > 0
        self.welch_lower_bound = welch_lower_bound(self.subject, self.other)
        self.paired = min(self.differences) > 0
        # Strict: worst subject seed minus best other seed (> 0: the ranges do not overlap).
        self.margin = min(self.subject) - max(self.other)
        self.unpaired = self.margin > 0


@dataclass
class Claims:
    """Every check of :func:`compare_kinds`, JSON-ready with :meth:`to_dict`."""

    subject: str
    versus: List[Versus]
    teacher: Optional[str] = None
    teacher_ratio: Optional[float] = None
    teacher_min_ratio: Optional[float] = None
    ratio_needed: float = 0.95

    @property
    def paired(self) -> bool:
        """Above every other kind in every common seed (and the teacher ratio, if any, is met)."""
        return all(v.paired for v in self.versus) and self._teacher_ok()

    @property
    def unpaired(self) -> bool:
        """Worst seed above every other kind's best seed (and the teacher ratio, if any, is met)."""
        return all(v.unpaired for v in self.versus) and self._teacher_ok()

    @property
    def bounded(self) -> bool:
        """The mean paired lead over every other kind is above zero at one-sided 95% (Student's t;
        needs 2+ common seeds), and the teacher ratio, if any, is met. Unlike :attr:`unpaired`, whose
        worst-against-best test gets stricter with every seed added, this converges as seeds are added."""
        return all(v.bounded for v in self.versus) and self._teacher_ok()

    def _teacher_ok(self) -> bool:
        return self.teacher_ratio is None or self.teacher_ratio >= self.ratio_needed

    def to_dict(self) -> Dict[str, Any]:
        """Plain data: the subject, per-kind checks, the teacher ratio and the three verdicts."""
        return {"subject": self.subject, "versus": [asdict(v) for v in self.versus], "teacher": self.teacher,
                "teacher_ratio": self.teacher_ratio, "teacher_min_ratio": self.teacher_min_ratio,
                "ratio_needed": self.ratio_needed, "paired": self.paired, "unpaired": self.unpaired,
                "bounded": self.bounded}


def compare_kinds(per_seed: PerSeed, subject: str, others: Sequence[str], teacher: Optional[str] = None,
                  ratio_needed: float = 0.95) -> Claims:
    """Check ``subject`` against each of ``others`` over the seeds both have, and (with ``teacher``)
    that its mean mIoU is at least ``ratio_needed`` of the teacher's over their common seeds."""
    for kind in (subject, *others, *([teacher] if teacher else [])):
        if kind not in per_seed:
            raise ValueError(f"no results for kind {kind!r}; have {', '.join(sorted(per_seed))}")
    def common(kind: str) -> Tuple[List[int], List[float], List[float]]:
        seeds = sorted(set(per_seed[subject]) & set(per_seed[kind]))
        if not seeds:
            raise ValueError(f"{subject} and {kind} share no seed")
        return seeds, [per_seed[subject][s] for s in seeds], [per_seed[kind][s] for s in seeds]

    claims = Claims(subject, [Versus(kind, *common(kind)) for kind in others], ratio_needed=ratio_needed)
    if teacher:
        _, ours, theirs = (np.array(x) for x in common(teacher))
        claims.teacher = teacher
        claims.teacher_ratio = float(ours.mean() / theirs.mean())
        claims.teacher_min_ratio = float(ours.min() / theirs.max())
    return claims


def pool_results(docs: Sequence[Tuple[str, Mapping[str, Any]]]) -> Tuple[Dict[str, List[float]], Dict[str, Any]]:
    """``{kind: [every mIoU of every document]}`` and the shared protocol: each segmenter counted as an
    independent draw, seeds ignored. For runs whose seeds do not repeat (:func:`unrepeatable_runs`),
    where the same kind and seed in two files are two different segmenters. Raises ``ValueError``
    naming the file whose protocol differs from the first one's."""
    protocol, documents = _same_protocol_rows(docs, "pool")
    pooled: Dict[str, List[float]] = {}
    for _, rows in documents:
        for kind, values in rows.items():
            pooled.setdefault(kind, []).extend(values[s] for s in sorted(values))
    return pooled, protocol


@dataclass
class PooledVersus:
    """The subject's draws against another kind's, unpaired: the strict margin and Welch's bound."""

    kind: str
    subject: List[float]
    other: List[float]
    margin: float = field(init=False)
    unpaired: bool = field(init=False)
    mean_difference: float = field(init=False)
    welch_lower_bound: Optional[float] = field(init=False)
    bounded: bool = field(init=False)

    def __post_init__(self) -> None:
        self.margin = min(self.subject) - max(self.other)
        self.unpaired = self.margin > 0
        self.mean_difference = float(np.mean(self.subject) - np.mean(self.other))
        self.welch_lower_bound = welch_lower_bound(self.subject, self.other)
        self.bounded = self.welch_lower_bound is not None and self.welch_lower_bound > 0


def compare_pooled(pooled: Mapping[str, Sequence[float]], subject: str, others: Sequence[str],
                   teacher: Optional[str] = None, ratio_needed: float = 0.95) -> Dict[str, Any]:
    """:func:`compare_kinds` for pooled draws (:func:`pool_results`): per other kind the strict margin and
    the unpaired bound, the teacher ratio of the means, and the verdicts ``unpaired`` (every margin
    above zero) and ``bounded`` (every Welch bound above zero), each with the teacher ratio met."""
    for kind in (subject, *others, *([teacher] if teacher else [])):
        if kind not in pooled:
            raise ValueError(f"no results for kind {kind!r}; have {', '.join(sorted(pooled))}")
    versus = [PooledVersus(kind, list(pooled[subject]), list(pooled[kind])) for kind in others]
    ratio = float(np.mean(pooled[subject]) / np.mean(pooled[teacher])) if teacher else None
    ok = ratio is None or ratio >= ratio_needed
    return {"subject": subject, "versus": [asdict(v) for v in versus], "teacher": teacher, "teacher_ratio": ratio,
            "ratio_needed": ratio_needed, "unpaired": all(v.unpaired for v in versus) and ok,
            "bounded": all(v.bounded for v in versus) and ok}
