"""Model cards: the ``README.md`` of an exported model folder, with hub front matter.

:func:`render_card` is the one card builder: the recipe (``recipes/distill.py``: student, teacher and
segmenter cards) and ``dfsfuse export`` (:func:`dfsfuse.publish.export_student`) both call it. Its
front matter is ``huggingface_hub``'s :class:`~huggingface_hub.ModelCardData` (see
:func:`card_data`), so ``huggingface_hub.ModelCard(text).data`` reads it back.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, List, Mapping, Optional, Sequence

import yaml

if TYPE_CHECKING:  # huggingface_hub is imported when a card is built, not with dfsfuse
    from huggingface_hub import ModelCardData

CARD_METRICS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")
BASELINE_METHODS = ("avg", "max")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _ms(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and not math.isnan(value) else "n/a"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "n/a" if value is None else str(value)


def metrics_table(metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
                  methods: Sequence[str] = ("avg", "max", "teacher", "student"),
                  names: Sequence[str] = CARD_METRICS) -> str:
    """Markdown table: one row per (dataset, method) from ``{method: {dataset: {metric: mean}}}``."""
    datasets = list(next(iter(metrics.values())).keys()) if metrics else []
    lines = ["| dataset | method | " + " | ".join(names) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in names) + " |"]
    for ds in datasets:
        for m in methods:
            if m in metrics and ds in metrics[m]:
                row = metrics[m][ds]
                lines.append(f"| {ds} | {m} | " + " | ".join(_fmt(row.get(n, math.nan)) for n in names) + " |")
    return "\n".join(lines)


def hub_dataset_ids(names: Iterable[Any]) -> List[str]:
    """The names that are real hub dataset ids (``owner/name``); local set names and paths are left out."""
    return [d for d in names if isinstance(d, str) and d.count("/") == 1 and not d.startswith((".", "/"))
            and all(part.strip() for part in d.split("/"))]


def _own_method(config: Mapping[str, Any], metrics: Mapping[str, Any]) -> Optional[str]:
    """The row of ``metrics`` that describes the carded model: its ``role`` when that has a row,
    else the last method that is not a rule baseline (``student`` beside ``teacher``)."""
    if config.get("role") in metrics:
        return config["role"]
    learned = [m for m in metrics if m not in BASELINE_METHODS]
    return learned[-1] if learned else None


def card_data(name: str, config: Mapping[str, Any], *, metrics: Optional[Mapping[str, Any]] = None,
              training: Optional[Mapping[str, Any]] = None, license: str = "mit") -> "ModelCardData":
    """The card's hub front matter as a :class:`huggingface_hub.ModelCardData`.

    ``tags`` name the task and the architecture; ``metrics`` lists the metric names of the held-out
    table; ``datasets`` holds only the training sets that are real hub ids (:func:`hub_dataset_ids`),
    and held-out results go into ``model-index`` (:class:`~huggingface_hub.EvalResult`, the carded
    model's own row) only for held-out sets that are real hub ids. Everything else stays in the text.
    """
    from huggingface_hub import EvalResult, ModelCardData

    arch = config.get("architecture", "?")
    task = "image-segmentation" if config.get("kind") == "segmentation" else "image-to-image"
    metrics = metrics or {}
    rows = [row for per_set in metrics.values() if isinstance(per_set, Mapping) for row in per_set.values()
            if isinstance(row, Mapping)]
    names = [n for n in CARD_METRICS if any(n in row for row in rows)]
    results = []
    own = _own_method(config, metrics)
    own_rows = metrics.get(own) or {} if own is not None else {}
    for dataset in hub_dataset_ids(own_rows):
        row = own_rows[dataset]
        for metric in names:
            value = row.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                results.append(EvalResult(task_type=task, dataset_type=dataset, dataset_name=dataset,
                                          metric_type=metric, metric_name=metric, metric_value=float(value)))
    return ModelCardData(
        license=license,
        library_name="dfsfuse",
        pipeline_tag=task,
        tags=["image-fusion", "infrared", "visible", "knowledge-distillation", "dfsfuse", arch],
        datasets=hub_dataset_ids((training or {}).get("datasets", [])) or None,
        metrics=names or None,
        model_name=name if results else None,
        eval_results=results or None,
    )


def distilled_from_line(sources: Mapping[str, Mapping[str, str]]) -> str:
    """The card's "distilled from" line for a run's ``metrics.json`` ``distilled_from``
    (``{role: {"path", "sha256"}}``): each frozen model stage 2 read, by folder and weights hash."""
    return "; ".join(f"{role} `{src['path']}` (weights SHA-256 {src['sha256']})" for role, src in sources.items())


def render_card(name: str, config: Mapping[str, Any], *, summary: Optional[Mapping[str, Any]] = None,
                metrics: Optional[Mapping[str, Any]] = None, training: Optional[Mapping[str, Any]] = None,
                sample_image: Optional[str] = None, license: str = "mit", repo_id: Optional[str] = None,
                sample_caption: str = "IR | VIS | avg | max | teacher | student",
                sections: Optional[Mapping[str, str]] = None) -> str:
    """A hub-ready model card for model folder ``name`` (the one card builder; see the module doc).

    ``config`` is the folder's ``config.json`` content; ``summary`` holds params/GMAC/latency;
    ``metrics`` is ``{method: {dataset: {metric: mean}}}`` on held-out pairs; ``training`` says
    what the model was trained on, for how long, and with which recipe config. ``repo_id``
    (the hub id the folder is published under) goes into the usage examples; ``sample_caption``
    describes ``sample_image``; ``sections`` maps extra headings to markdown bodies. The front
    matter is :func:`card_data`'s.
    """
    arch = config.get("architecture", "?")
    where = repo_id or "path/or/hub-id"
    front = card_data(name, config, metrics=metrics, training=training, license=license)
    if config.get("kind") == "segmentation":
        intro = [f"A dfsfuse **{arch}** semantic segmenter (9 MSRS classes) for fused infrared/visible "
                 "luminance images (B×1×H×W in [0, 1]).", "",
                 "## Use", "", "```python", "import dfsfuse", "",
                 f'model = dfsfuse.from_pretrained("{where}")',
                 "classes = model(fused).logits.argmax(1)  # B×H×W class indices 0–8", "```", ""]
    else:
        intro = [f"A dfsfuse **{arch}** infrared/visible fusion model "
                 f"({config.get('kind', 'fusion')}). It takes an IR image and the luminance (Y) of a visible "
                 "image, both in [0, 1], and returns the fused luminance; put the visible Cb/Cr back for colour.", "",
                 "## Use", "", "```python", "import dfsfuse", "",
                 f'model = dfsfuse.from_pretrained("{where}")', "fused = model(ir, vis_y).fused  # B×1×H×W in [0, 1]",
                 "```", "", f"or from the command line: `dfsfuse fuse --model {where} --ir IR_DIR --vi VI_DIR --out OUT` "
                 "(colour output; `--gray` for the fused luminance only).", ""]
    out = ["---", front.to_yaml(), "---", "", f"# {name}", "", *intro]
    if summary:
        out += ["## Size and speed", "", "| params | GMAC | latency (ms) | size | device |",
                "| ---: | ---: | ---: | --- | --- |",
                f"| {_count(summary.get('params'))} | {_fmt(summary.get('gmac', 'n/a'))} | "
                f"{_ms(summary.get('latency_ms'))} | {summary.get('height', '?')}×{summary.get('width', '?')} | "
                f"{summary.get('device', 'n/a')} |", ""]
    if metrics:
        out += ["## Metrics on held-out pairs", "",
                "Means over held-out real pairs never seen in training, computed with `dfsfuse eval` conventions "
                "(the evaluator published tables use; see the dfsfuse README). `avg` and `max` are the trivial "
                "fusions every learned model must beat.", "", metrics_table(metrics), ""]
    if training:
        out += ["## Training", ""]
        for key, value in training.items():
            if key != "config":
                shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
                out.append(f"- **{key}**: {shown}")
        if training.get("config") is not None:
            out += ["", "<details><summary>recipe config</summary>", "", "```yaml",
                    yaml.safe_dump(training["config"], sort_keys=False).strip(), "```", "", "</details>"]
        out.append("")
    for heading, body in (sections or {}).items():
        out += [f"## {heading}", "", body.strip(), ""]
    if sample_image:
        out += ["## Sample", "", f"![{sample_caption}]({sample_image})", "", f"*{sample_caption}*", ""]
    out += ["## Architecture config", "", "```json", _json(config), "```", ""]
    return "\n".join(out)


def _json(config: Mapping[str, Any]) -> str:
    import json

    slim = {k: v for k, v in config.items() if k not in ("train_config",)}
    return json.dumps(slim, indent=2)
