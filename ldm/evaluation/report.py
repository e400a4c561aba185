"""Evaluation of a text-to-image model against real captioned images (the report of `ldm eval`).

The metrics themselves (FID, KID, precision/recall, the nearest-neighbour and zero-shot judges,
CLIP score) are in `ldm.evaluation.metrics`. Here: which prompts, which real images they are compared with,
the groups they are reported in, and the tables.

- Prompts are distinct captions: every held-out one and a seeded draw of training ones. A caption
  has several real images (one per design); its reference image for the distribution metrics is
  one of them, chosen with the seed.
- The judge's ceiling ("real images" rows) is measured leave-one-out: a real image's own row is
  taken out of the gallery, so its nearest neighbour is the same emoji in another design (or a
  wrong one). Chance is 1 / number of names.
- "family" accuracy counts a picture right when its nearest name is the prompt up to skin tone and
  gender ("woman judge: dark skin tone" for "man judge: light skin tone").
- Objects are the emoji outside the People & Body, Smileys & Emotion and Component groups.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ldm.evaluation.metrics import (
    ClipFeatures,
    EvaluationError,
    InceptionFeatures,
    NearestNeighbourJudge,
    ZeroShotJudge,
    clip_score,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
    topk_accuracy,
)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# The report: generate at several guidance scales, score per prompt group
# ----------------------------------------------------------------------------------------------

NON_OBJECT_GROUPS = frozenset({"People & Body", "Smileys & Emotion", "Component"})


@dataclass
class EvalSettings:
    scales: tuple[float, ...] = (1.0, 3.0, 7.0)
    n_train_prompts: int = 200        # random train captions added to all held-out captions
    max_heldout: int | None = None    # cap on held-out captions (None: all)
    seed: int = 0
    steps: int = 25
    sampler: str = "ddim"
    batch_size: int = 32
    k: int = 3                        # precision/recall neighbourhood
    kid_subsets: int = 100
    kid_subset_size: int = 100       # < group sizes, so subsets differ and the std means something
    extra: dict = field(default_factory=dict)


@dataclass
class PromptItem:
    caption: str
    split: str            # "heldout" or "train"
    combination: bool     # its exact (person type, skin tone) combination was held out of training
    real_index: int       # row of its reference real image (in the split's list, or the combined RealSet)
    is_object: bool = False


@dataclass
class RealSet:
    """Every real image of both splits at one size, with its caption, design and emoji group."""
    images: torch.Tensor
    captions: list[str]
    styles: list[str]
    groups: list[str]
    splits: list[str]

    def rows_of(self) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = {}
        for i, c in enumerate(self.captions):
            rows.setdefault(c, []).append(i)
        return rows


GROUPS = ("all", "held-out captions", "held-out combinations", "train captions", "train objects", "held-out objects")


def read_heldout_combinations(path: str | os.PathLike) -> set[tuple[str, str]]:
    """(person type, skin tone) pairs from a tab-separated file; '#' lines are comments."""
    combos: set[tuple[str, str]] = set()
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 2:
            raise EvaluationError(f"{path}:{n}: expected 'person type<TAB>skin tone'")
        combos.add((parts[0].strip(), parts[1].strip()))
    return combos


def select_prompts(heldout: Sequence[str], train: Sequence[str], combos: set[tuple[str, str]],
                   n_train: int, seed: int, max_heldout: int | None = None) -> list[PromptItem]:
    """All (or the first max_heldout) distinct held-out captions, then n_train distinct train captions drawn with a seeded RNG.

    real_index is the caption's first row in its split's list.
    """  # noqa: E501
    from ldm.data.emoji import person_combination

    first_held = {c: i for i, c in reversed(list(enumerate(heldout)))}
    first_train = {c: i for i, c in reversed(list(enumerate(train)))}
    held = sorted(first_held, key=first_held.get)[:max_heldout]
    train_caps = sorted(first_train, key=first_train.get)
    if n_train < 0 or n_train > len(train_caps):
        raise EvaluationError(f"cannot draw {n_train} train prompts from {len(train_caps)} distinct train captions")
    picks = sorted(random.Random(seed).sample(range(len(train_caps)), n_train))
    items = [PromptItem(c, "heldout", person_combination(c) in combos, first_held[c]) for c in held]
    items += [PromptItem(train_caps[i], "train", person_combination(train_caps[i]) in combos, first_train[train_caps[i]])  # noqa: E501
              for i in picks]
    return items


def group_members(items: Sequence[PromptItem]) -> dict[str, list[int]]:
    return {
        "all": list(range(len(items))),
        "held-out captions": [i for i, it in enumerate(items) if it.split == "heldout"],
        "held-out combinations": [i for i, it in enumerate(items) if it.combination],
        "train captions": [i for i, it in enumerate(items) if it.split == "train"],
        "train objects": [i for i, it in enumerate(items) if it.split == "train" and it.is_object],
        "held-out objects": [i for i, it in enumerate(items) if it.split == "heldout" and it.is_object],
    }


def load_images(root: str | os.PathLike, size: int) -> tuple[torch.Tensor, list[str]]:
    """A captioned folder as one [N, 3, size, size] tensor in [-1, 1] and its captions."""
    from ldm.data.folder import CaptionedImageFolder

    ds = CaptionedImageFolder(root, size=size)
    return torch.stack([ds[i]["image"] for i in range(len(ds))]), list(ds.captions)


def load_real(data_dir: str | os.PathLike, size: int) -> RealSet:
    """train/ and heldout/ of an emoji build as one RealSet (style and group from captions.jsonl; '' when absent)."""
    from ldm.data.folder import CaptionedImageFolder

    parts = []
    for split in ("train", "heldout"):
        ds = CaptionedImageFolder(Path(data_dir) / split, size=size)
        parts.append((split, ds, torch.stack([ds[i]["image"] for i in range(len(ds))])))
    return RealSet(
        images=torch.cat([images for _, _, images in parts]),
        captions=[c for _, ds, _ in parts for c in ds.captions],
        styles=[str(e.get("style", "")) for _, ds, _ in parts for e in ds.extras],
        groups=[str(e.get("group", "")) for _, ds, _ in parts for e in ds.extras],
        splits=[split for split, ds, _ in parts for _ in range(len(ds))],
    )


def pil_to_tensor(images: Sequence) -> torch.Tensor:
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def generate(model, prompts: Sequence[str], scale: float, settings: EvalSettings, size: int,
             seeds: Sequence[int] | None = None) -> torch.Tensor:
    """Images for prompts in batches; prompt i gets seed settings.seed + i (or seeds[i]), so scales are compared on the same noise."""  # noqa: E501
    from ldm.sampling.options import SamplingOptions
    from ldm.tasks.txt2img import txt2img

    seeds = list(seeds) if seeds is not None else [settings.seed + i for i in range(len(prompts))]
    out = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = list(prompts[start:start + settings.batch_size])
        options = SamplingOptions(steps=settings.steps, guidance_scale=scale, sampler=settings.sampler, **settings.extra)  # noqa: E501
        # One call per run of consecutive seeds: txt2img seeds image j of a call with seed + j.
        images = []
        j = 0
        while j < len(batch):
            k = j + 1
            while k < len(batch) and seeds[start + k] == seeds[start + j] + (k - j):
                k += 1
            images += txt2img(model, batch[j:k], height=size, width=size, seed=seeds[start + j], options=options, progress=False)  # noqa: E501
            j = k
        out.append(pil_to_tensor(images))
    return torch.cat(out)


def _distribution_metrics(real: torch.Tensor, fake: torch.Tensor, settings: EvalSettings, prefix: str) -> dict[str, float | None]:  # noqa: E501
    n = min(len(real), len(fake))
    result: dict[str, float | None] = {}
    result[f"fid_{prefix}"] = frechet_distance(real, fake) if n >= 2 else None
    if n >= 2:
        kid, kid_std = kernel_inception_distance(real, fake, settings.kid_subsets, settings.kid_subset_size, settings.seed)  # noqa: E501
        result[f"kid_{prefix}"], result[f"kid_{prefix}_std"] = kid, kid_std
    else:
        result[f"kid_{prefix}"] = result[f"kid_{prefix}_std"] = None
    if prefix == "clip":
        if n > settings.k:
            result["precision"], result["recall"] = precision_recall(real, fake, settings.k)
        else:
            result["precision"] = result["recall"] = None
    return result


def _inception_score_of(inception: InceptionFeatures | None, features: torch.Tensor | None, rows: list[int]) -> dict:
    """{"inception_score": IS of these rows' images (one split)}, or {} without Inception weights."""
    if inception is None or features is None:
        return {}
    return {"inception_score": inception_score(inception.class_logits(features[rows]))[0]}


class Judge:
    """The judge CLIP over a RealSet: image features, the nearest-neighbour and zero-shot judges, text features."""

    def __init__(self, clip: torch.nn.Module, real: RealSet):
        from ldm.data.emoji import person_family

        self.features = ClipFeatures(clip)
        self.real = real
        self.real_features = self.features(real.images)
        self.nn = NearestNeighbourJudge(self.real_features, real.captions)
        self.zero_shot = ZeroShotJudge(self.features.encode_text(self.nn.classes), self.nn.classes)
        self.family = [person_family(c) for c in self.nn.classes]
        styles = sorted(set(real.styles))
        self.style_nn = NearestNeighbourJudge(self.real_features, real.styles) if len(styles) > 1 else None

    def scores(self, feats: torch.Tensor, targets: Sequence[str], text: torch.Tensor,
               exclude: torch.Tensor | None = None) -> dict[str, float]:
        from ldm.data.emoji import person_family

        nn_scores = self.nn.class_scores(feats, exclude)
        nn_acc = topk_accuracy(nn_scores, self.nn.classes, targets)
        zs_acc = topk_accuracy(self.zero_shot.class_scores(feats), self.zero_shot.classes, targets)
        best = nn_scores.argmax(dim=1).tolist()
        family = float(np.mean([self.family[b] == person_family(t) for b, t in zip(best, targets)]))
        return {"nn_top1": nn_acc[1], "nn_top5": nn_acc[5], "family_top1": family,
                "zeroshot_top1": zs_acc[1], "zeroshot_top5": zs_acc[5], "clip_score": clip_score(feats, text)}


def evaluate_model(model, clip: torch.nn.Module, data_dir: str | os.PathLike, settings: EvalSettings,
                   inception: InceptionFeatures | None = None, size: int | None = None,
                   on_progress: Callable[[str], None] = log.info, real: RealSet | None = None) -> dict:
    """Generate for each guidance scale and score every prompt group; returns a JSON-ready dict."""
    data = Path(data_dir)
    size = size or model.default_image_size
    t0 = time.time()
    # Real images go through the same size as generated ones (then the same resize to each feature
    # network), so the metrics compare content, not a resolution gap.
    real = real if real is not None else load_real(data, size)
    combos_path = data / "heldout_combinations.txt"
    combos = read_heldout_combinations(combos_path) if combos_path.is_file() else set()
    held_caps = [c for c, s in zip(real.captions, real.splits) if s == "heldout"]
    train_caps = [c for c, s in zip(real.captions, real.splits) if s == "train"]
    items = select_prompts(held_caps, train_caps, combos, settings.n_train_prompts, settings.seed, settings.max_heldout)
    rows_of = real.rows_of()
    for it in items:  # the reference image: one of the caption's designs, chosen with the seed
        rows = rows_of[it.caption]
        it.real_index = rows[random.Random(f"{settings.seed}:{it.caption}").randrange(len(rows))]
        it.is_object = real.groups[it.real_index] not in NON_OBJECT_GROUPS
    groups = group_members(items)
    prompts = [it.caption for it in items]
    judge = Judge(clip, real)
    prompt_text = judge.features.encode_text(prompts)
    reference = torch.tensor([it.real_index for it in items])
    real_clip = judge.real_features[reference]
    real_inc = inception(real.images[reference]) if inception is not None else None
    on_progress(f"loaded {len(real.captions)} real images, {len(prompts)} prompts in {time.time() - t0:.1f}s")

    rows_out: list[dict] = []
    # Reference row: the real images themselves, each judged without its own row (leave-one-out).
    for group, rows in groups.items():
        if rows:
            rows_out.append({"scale": None, "group": group, "n": len(rows),
                             **judge.scores(real_clip[rows], [prompts[i] for i in rows], prompt_text[rows], exclude=reference[rows]),  # noqa: E501
                             **_inception_score_of(inception, real_inc, rows)})
    timings: dict[str, float] = {}
    for scale in settings.scales:
        t = time.time()
        fake = generate(model, prompts, scale, settings, size)
        timings[f"generate_scale_{scale:g}"] = time.time() - t
        fake_clip = judge.features(fake)
        fake_inc = inception(fake) if inception is not None else None
        for group, rows in groups.items():
            if not rows:
                continue
            row = {"scale": scale, "group": group, "n": len(rows),
                   **judge.scores(fake_clip[rows], [prompts[i] for i in rows], prompt_text[rows])}
            row.update(_distribution_metrics(real_clip[rows], fake_clip[rows], settings, "clip"))
            if fake_inc is not None:
                row.update(_distribution_metrics(real_inc[rows], fake_inc[rows], settings, "inception"))
                row.update(_inception_score_of(inception, fake_inc, rows))
            rows_out.append(row)
        on_progress(f"scale {scale:g}: {len(prompts)} images in {timings[f'generate_scale_{scale:g}']:.1f}s")
    n_classes = len(judge.nn.classes)
    return {
        "settings": {**asdict(settings), "scales": list(settings.scales), "image_size": size},
        "classes": n_classes,
        "chance_top1": 1.0 / n_classes,
        "chance_top5": min(5, n_classes) / n_classes,
        "inception": inception is not None,
        "rows": rows_out,
        "seconds": time.time() - t0,
        "timings": timings,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def format_table(results: dict) -> str:
    """A markdown table of the results, with chance levels and a note on the Inception features."""
    inc = results["inception"]
    head = ["guidance", "prompts", "n", "FID (CLIP)", "KID×10³ (CLIP)", "precision", "recall",
            "NN top-1", "NN top-5", "family top-1", "zero-shot top-1", "CLIP score"]
    if inc:
        head += ["FID (Inception)", "KID×10³ (Inception)", "IS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["rows"]:
        kid = None if r.get("kid_clip") is None else 1e3 * r["kid_clip"]
        cells = ["real images" if r["scale"] is None else f"{r['scale']:g}", r["group"], str(r["n"]),
                 _fmt(r.get("fid_clip"), ".4f"), _fmt(kid, ".3f"), _fmt(r.get("precision"), ".3f"), _fmt(r.get("recall"), ".3f"),  # noqa: E501
                 f"{r['nn_top1']:.1%}", f"{r['nn_top5']:.1%}", f"{r.get('family_top1', float('nan')):.1%}",
                 f"{r['zeroshot_top1']:.1%}", f"{r['clip_score']:.2f}"]
        if inc:
            kid_i = None if r.get("kid_inception") is None else 1e3 * r["kid_inception"]
            cells += [_fmt(r.get("fid_inception"), ".2f"), _fmt(kid_i, ".3f"), _fmt(r.get("inception_score"), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    s = results["settings"]
    lines += [
        "",
        f"Chance level over {results['classes']} emoji names: top-1 {results['chance_top1']:.3%}, top-5 {results['chance_top5']:.3%}.",  # noqa: E501
        f"Sampler {s['sampler']}, {s['steps']} steps, {s['image_size']} px, seed {s['seed']}; prompt i uses seed {s['seed']}+i at every scale.",  # noqa: E501
        "FID/KID/precision/recall compare generated images with one real image of each prompt's caption (CLIP image features,"  # noqa: E501
        f" k={s['k']}); NN = nearest real image over all real images of every design; family = NN up to skin tone and gender;"  # noqa: E501
        " 'real images' rows are the judge's ceiling, leave-one-out (an image's own row is not in the gallery).",
    ]
    if not inc:
        lines.append("Inception-v3 metrics: not computed (no --inception-weights file given; weights are never downloaded).")  # noqa: E501
    return "\n".join(lines)


def save_results(results: dict, path: str | os.PathLike) -> None:
    from ldm.io.checkpoint import atomic_path

    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(json.dumps(results, indent=2) + "\n")


def format_comparison(results_by_model: dict[str, dict]) -> str:
    """Several models' `ldm eval` results in one table: per prompt group, each model at each guidance scale.

    The judge's ceiling ('real images') is listed once per group, from the first model's results, which
    is the same figure for every model judged at the same image size.
    """
    head = ["prompts", "model", "guidance", "n", "NN top-1", "NN top-5", "family top-1", "FID (CLIP)", "precision", "recall",  # noqa: E501
            "CLIP score"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = list(dict.fromkeys(r["group"] for res in results_by_model.values() for r in res["rows"]))
    for group in groups:
        ceiling_done = False
        for name, res in results_by_model.items():
            for r in res["rows"]:
                if r["group"] != group or (r["scale"] is None and ceiling_done):
                    continue
                ceiling_done = ceiling_done or r["scale"] is None
                lines.append("| " + " | ".join([
                    group, "real images" if r["scale"] is None else name, "—" if r["scale"] is None else f"{r['scale']:g}",  # noqa: E501
                    str(r["n"]), f"{r['nn_top1']:.1%}", f"{r['nn_top5']:.1%}", f"{r.get('family_top1', float('nan')):.1%}",  # noqa: E501
                    _fmt(r.get("fid_clip"), ".4f"), _fmt(r.get("precision"), ".3f"), _fmt(r.get("recall"), ".3f"),
                    f"{r['clip_score']:.2f}"]) + " |")
    first = next(iter(results_by_model.values()))
    lines += ["", f"Chance level over {first['classes']} emoji names: top-1 {first['chance_top1']:.3%}, "
                  f"top-5 {first['chance_top5']:.3%}."]
    for name, res in results_by_model.items():
        s = res["settings"]
        lines.append(f"{name}: sampler {s['sampler']}, {s['steps']} steps, {s['image_size']} px, seed {s['seed']}.")
    return "\n".join(lines)


def best_scale_summary(results: dict, group: str) -> tuple[float, float]:
    """(best NN top-1 over the generated rows of a group, the guidance scale that gave it)."""
    rows = [r for r in results["rows"] if r["group"] == group and r["scale"] is not None]
    if not rows:
        raise EvaluationError(f"no generated rows for the group {group!r}")
    best = max(rows, key=lambda r: r["nn_top1"])
    return best["nn_top1"], best["scale"]
