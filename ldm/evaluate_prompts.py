"""The first prompts a user tries, scored across seeds; diversity across seeds; one row per design.

- `read_prompt_list`: a fixed list of emoji names in categories (configs/emoji/first-prompts.txt).
- `evaluate_prompt_list`: each prompt x N seeds; the judge's nearest real image says whether each
  picture is right (exact name, and up to skin tone and gender). Diversity is the mean pairwise
  cosine distance of the judge's image features over the seeds, beside the same spread over the
  caption's real images (its designs): a model that draws one picture per caption scores near 0.
- `evaluate_styles`: each prompt with each style word ("red apple, twemoji style"); a picture is in
  the asked style when its nearest real image is of that design.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ldm.evaluation.metrics import EvaluationError
from ldm.evaluation.report import EvalSettings, Judge, generate


def read_prompt_list(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(category, prompt) pairs; '## name' lines start a category, '#' lines are comments."""
    category, out = "", []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("## "):
            category = line[3:].strip()
        elif line and not line.startswith("#"):
            out.append((category, line))
    if not out:
        raise EvaluationError(f"{path} holds no prompts")
    return out


def pairwise_spread(features: torch.Tensor) -> float:
    """Mean cosine distance 1 - cos(a, b) over all pairs of rows (0 when every row is the same picture)."""
    if len(features) < 2:
        return float("nan")
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    sim = f @ f.T
    n = len(f)
    return float((1 - sim).sum() / (n * (n - 1)))


def _check_known(judge: Judge, prompts: Sequence[str]) -> None:
    known = set(judge.nn.classes)
    missing = [p for p in prompts if p not in known]
    if missing:
        raise EvaluationError(f"{len(missing)} listed prompts are not emoji names of the data, e.g. {missing[0]!r}")


def evaluate_prompt_list(
    model,
    judge: Judge,
    prompts: Sequence[tuple[str, str]],
    settings: EvalSettings,
    scale: float,
    seeds: int = 6,
    size: int | None = None,
) -> dict:
    """Each prompt x `seeds` seeds (seed settings.seed + j for every prompt); per-prompt and per-category shares."""
    from ldm.data.emoji import person_family

    names = [p for _, p in prompts]
    _check_known(judge, names)
    size = size or model.default_image_size
    flat = [p for p in names for _ in range(seeds)]
    fake = judge.features(
        generate(model, flat, scale, settings, size, seeds=[settings.seed + j for _ in names for j in range(seeds)])
    )
    best = judge.nn.class_scores(fake).argmax(dim=1).tolist()
    rows_of = judge.real.rows_of()
    heldout = {c for c, s in zip(judge.real.captions, judge.real.splits) if s == "heldout"}
    rows = []
    for i, (category, prompt) in enumerate(prompts):
        picks = [judge.nn.classes[b] for b in best[i * seeds : (i + 1) * seeds]]
        rows.append(
            {
                "category": category,
                "prompt": prompt,
                "heldout": prompt in heldout,
                "top1": float(np.mean([p == prompt for p in picks])),
                "family_top1": float(np.mean([person_family(p) == person_family(prompt) for p in picks])),
                "diversity": pairwise_spread(fake[i * seeds : (i + 1) * seeds]),
                "real_diversity": pairwise_spread(judge.real_features[rows_of[prompt]]),
                "judged_as": max(set(picks), key=picks.count),
            }
        )
    categories = {}
    for category in dict.fromkeys(r["category"] for r in rows):
        mine = [r for r in rows if r["category"] == category]
        categories[category] = {"n": len(mine), "top1": float(np.mean([r["top1"] for r in mine]))}
    return {
        "scale": scale,
        "seeds": seeds,
        "rows": rows,
        "categories": categories,
        "top1": float(np.mean([r["top1"] for r in rows])),
        "diversity": float(np.nanmean([r["diversity"] for r in rows])),
        "real_diversity": float(np.nanmean([r["real_diversity"] for r in rows])),
    }


def evaluate_styles(
    model,
    judge: Judge,
    prompts: Sequence[str],
    styles: Sequence[str],
    settings: EvalSettings,
    scale: float,
    size: int | None = None,
) -> dict:
    """Every prompt with every style word, one seed each: how often the picture is of the asked design and of the right emoji."""  # noqa: E501
    from ldm.training.captions import styled

    if judge.style_nn is None:
        raise EvaluationError(
            "the real images carry no styles (captions.jsonl 'style'): nothing to compare a style with"
        )
    _check_known(judge, prompts)
    size = size or model.default_image_size
    out = {}
    for style in styles:
        fake = judge.features(generate(model, [styled(p, style) for p in prompts], scale, settings, size))
        style_hit = topk_accuracy_1(judge.style_nn, fake, [style] * len(prompts))
        caption_hit = topk_accuracy_1(judge.nn, fake, list(prompts))
        out[style] = {"n": len(prompts), "style_top1": style_hit, "top1": caption_hit}
    return {"scale": scale, "styles": out}


def topk_accuracy_1(nn, features: torch.Tensor, targets: Sequence[str]) -> float:
    best = nn.class_scores(features).argmax(dim=1).tolist()
    return float(np.mean([nn.classes[b] == t for b, t in zip(best, targets)]))


def format_prompt_table(result: dict) -> str:
    lines = [
        f"Prompt list at guidance {result['scale']:g}, {result['seeds']} seeds each: judge top-1 {result['top1']:.1%} "
        f"(diversity across seeds {result['diversity']:.3f}; the same captions' real designs {result['real_diversity']:.3f})",  # noqa: E501
        "",
        "| category | prompts | top-1 over seeds |",
        "|---|---|---|",
    ]
    lines += [f"| {c} | {v['n']} | {v['top1']:.1%} |" for c, v in result["categories"].items()]
    lines += [
        "",
        "| prompt | held out | top-1 | family top-1 | judged as (most often) | diversity | real diversity |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['prompt']} | {'yes' if r['heldout'] else ''} | {r['top1']:.0%} | {r['family_top1']:.0%} | {r['judged_as']} | "  # noqa: E501
        f"{r['diversity']:.3f} | {r['real_diversity']:.3f} |"
        for r in result["rows"]
    ]
    return "\n".join(lines)


def format_style_table(result: dict) -> str:
    lines = [
        f"Style words at guidance {result['scale']:g}: the picture's nearest real image is of the asked design (style top-1)"  # noqa: E501
        " and of the prompted emoji (top-1)",
        "",
        "| style | prompts | style top-1 | top-1 |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s} | {v['n']} | {v['style_top1']:.1%} | {v['top1']:.1%} |" for s, v in result["styles"].items()]
    return "\n".join(lines)
