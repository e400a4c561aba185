"""Contrastive training of a tiny CLIP on a captioned image folder (the emoji train split).

The model is open_clip's own `CLIP`, built from an open_clip-format JSON config, trained with
`open_clip.loss.ClipLoss`, so its weights load into open_clip (and into
`ldm.models.text_encoder.FrozenOpenCLIPEmbedder`) with open_clip's key names. The text tower is
standard (77 tokens, the stock 49408-token BPE vocabulary), so the bundled tokenizer works offline.

    ldm clip --data data/emoji --out runs/clip --steps 500
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from pathlib import Path

import open_clip
import torch

from ldm.core.errors import InvalidOptionError, LdmError, MissingFileError
from ldm.data.folder import CaptionedImageFolder
from ldm.models.clip import DEFAULT_CONFIG, create_clip, encode_text_trimmed, load_clip, save_clip, tokenize

WEIGHTS_NAME = "clip.safetensors"
MAX_LOGIT_SCALE = math.log(100.0)  # open_clip's clamp: keeps the temperature from collapsing

log = logging.getLogger(__name__)


class ClipDataError(LdmError, ValueError):
    """Image/caption pairs that cannot train a CLIP (too few, or not as many images as captions)."""


def load_split(root: str | os.PathLike, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """All images of a captioned folder as one [N,3,S,S] tensor in [-1,1] (emoji fit in memory), and their captions."""
    ds = CaptionedImageFolder(root, size=image_size)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    return images, list(ds.captions)


@torch.no_grad()
def retrieval_accuracy(
    model: open_clip.CLIP,
    images: torch.Tensor,
    tokens: torch.Tensor,
    rows: list[int] | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Text->image and image->text top-1/top-5 accuracy: caption i should find image i among all N (and back).

    rows restricts the scored queries (e.g. the held-out combinations); they are still ranked against all N.
    """
    was_training = model.training
    model.eval()
    img = torch.cat(
        [model.encode_image(images[i : i + batch_size], normalize=True) for i in range(0, len(images), batch_size)]
    )
    txt = torch.cat([encode_text_trimmed(model, tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)])
    model.train(was_training)
    sim = txt @ img.T  # [texts, images]
    query = torch.arange(len(sim)) if rows is None else torch.tensor(rows, dtype=torch.long)
    k = min(5, len(sim))
    t2i = sim[query].topk(k, dim=1).indices
    i2t = sim.T[query].topk(k, dim=1).indices
    return {
        "n": len(query),
        "t2i_top1": (t2i[:, 0] == query).float().mean().item(),
        "t2i_top5": (t2i == query[:, None]).any(1).float().mean().item(),
        "i2t_top1": (i2t[:, 0] == query).float().mean().item(),
        "i2t_top5": (i2t == query[:, None]).any(1).float().mean().item(),
    }


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # As open_clip's trainer: no weight decay on gains, biases, norms and the temperature.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * lr * (1.0 + math.cos(math.pi * progress))


def train_clip(
    model: open_clip.CLIP,
    images: torch.Tensor,
    captions: list[str],
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int | None = None,
    seed: int = 0,
    log_every: int = 25,
    precision: str = "bf16",
) -> list[float]:
    """AdamW + warmup/cosine over random batches (reshuffled each epoch); returns the loss of every step.

    precision "bf16" runs the towers under CPU bf16 autocast (about half the CPU time where the CPU has
    bf16 instructions); weights, optimizer state and the loss stay fp32.
    """
    if precision not in ("bf16", "fp32"):
        raise InvalidOptionError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
    if steps < 1:
        raise InvalidOptionError(f"steps must be positive, got {steps}")
    if len(images) != len(captions) or len(images) < 2:
        raise ClipDataError(
            f"need at least 2 image/caption pairs of equal count, got {len(images)} images and {len(captions)} captions"
        )
    batch_size = min(batch_size, len(images))
    warmup = max(1, steps // 20) if warmup is None else warmup
    tokens = tokenize(captions, model.context_length)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = open_clip.loss.ClipLoss()
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    model.train()
    losses: list[float] = []
    order = torch.randperm(len(images), generator=gen)
    pos = 0
    start = time.time()
    for step in range(steps):
        if pos + batch_size > len(order):  # drop the last partial batch: the loss's negatives stay batch_size - 1
            order, pos = torch.randperm(len(images), generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            image_features = model.encode_image(images[idx], normalize=True)
            text_features = encode_text_trimmed(model, tokens[idx])
        loss = loss_fn(image_features.float(), text_features.float(), model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = losses[-log_every:]
            log.info(
                "step %d/%d  loss %.4f  lr %.2e  %.1fs",
                step + 1,
                steps,
                sum(recent) / len(recent),
                opt.param_groups[0]["lr"],
                time.time() - start,
            )
    return losses


def _fmt_row(label: str, r: dict) -> str:
    return f"| {label} | {r['n']} | {r['t2i_top1']:.1%} | {r['t2i_top5']:.1%} | {r['i2t_top1']:.1%} | {r['i2t_top5']:.1%} |"  # noqa: E501


def _write_card(path: Path, report: dict) -> None:
    cpu = report.get("train_cpu_seconds")
    cpu_text = f", {cpu / 60:.1f} min CPU" if cpu is not None else ""
    lines = [
        "# emoji-clip: a tiny OpenCLIP trained on Noto Color Emoji",
        "",
        "Contrastive (CLIP) model trained from scratch by `ldm clip` on the train split of the",
        "emoji dataset (`ldm data emoji`: Noto Color Emoji renders, 64x64, captioned with their",
        "English CLDR names). Its text tower is the text encoder of the project's small pretrained emoji diffusion model.",  # noqa: E501
        "",
        "- Config: `configs/emoji/emoji-clip.json` (open_clip format; `open_clip.add_model_config(path)` then",
        '  `open_clip.create_model("emoji-clip")`, or `ldm.models.clip.load_clip(weights)`).',
        f"- Weights: `{WEIGHTS_NAME}`, fp16 safetensors, open_clip `CLIP` state dict keys ({report['parameters']:,} parameters;",  # noqa: E501
        "  the text tower is everything outside `visual.*`).",
        "- Tokenizer: open_clip's bundled BPE (`open_clip.tokenize`), context length 77.",
        "- Font: Noto Color Emoji (SIL Open Font License 1.1); captions: Unicode CLDR names from `emoji-test.txt`.",
        "",
        "## Training (measured)",
        "",
        f"- Command: `ldm clip --data data/emoji --out runs/clip --steps {report['steps']} "
        f"--batch-size {report['batch_size']} --precision {report.get('precision', 'fp32')}` (seed 0)",
        f"- Train pairs: {report['train_pairs']}; held-out pairs: {report['heldout_pairs']}",
        f"- Steps: {report['steps']}, batch {report['batch_size']}, AdamW lr {report['lr']} with warmup + cosine, weight decay {report['weight_decay']}",  # noqa: E501
        f"- Time: {report['train_seconds'] / 60:.1f} min wall{cpu_text}, {report['threads']} thread(s), "
        f"{report.get('precision', 'fp32')} forward pass ({report['machine']}), torch {report['torch']}",
        f"- Train loss (mean of the first / last {report['loss_window']} steps): {report['loss_first']:.3f} -> {report['loss_final']:.3f}",  # noqa: E501
        f"- Final logit scale (1/temperature): {report['logit_scale']:.1f}",
        "",
        "## Retrieval (measured on the fp16 weights as shipped)",
        "",
        "| split | pairs | text->image top-1 | text->image top-5 | image->text top-1 | image->text top-5 |",
        "|---|---|---|---|---|---|",
        _fmt_row("held-out", report["heldout"]),
    ]
    if "heldout_combinations" in report:
        lines.append(_fmt_row("held-out combinations only", report["heldout_combinations"]))
    lines += [
        _fmt_row(f"train (first {report['train_subset']['n']})", report["train_subset"]),
        "",
        "Held-out retrieval ranks each caption against all held-out images (chance top-1 = 1/pairs). The held-out",
        "split holds whole (person type, skin tone) combinations (see the dataset's `heldout_combinations.txt`),",
        "ranked against the whole held-out gallery, plus ~5% of the other emoji. The train rows are the first",
        "emoji of the list (faces and people that differ only in skin tone or gender), hence harder than a random sample.",  # noqa: E501
        "",
    ]
    path.write_text("\n".join(lines))


def _combination_rows(captions: list[str]) -> list[int]:
    """Indices of the captions that belong to a held-out (person type, skin tone) combination."""
    from ldm.data.emoji import HELDOUT_COMBINATIONS, person_combination  # local: the builder needs only PIL

    combos = set(HELDOUT_COMBINATIONS)
    return [i for i, cap in enumerate(captions) if person_combination(cap) in combos]


def _image_size(model: open_clip.CLIP) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else size


def evaluate_clip(
    weights: str | os.PathLike, data_dir: str | os.PathLike, config_path: str | os.PathLike = DEFAULT_CONFIG
) -> dict:
    """Retrieval figures of a weights file on <data_dir>/heldout (all, and the held-out combinations) and on train."""
    model = load_clip(weights, config_path)
    data = Path(data_dir)
    size = _image_size(model)
    held_images, held_captions = load_split(data / "heldout", size)
    train_images, train_captions = load_split(data / "train", size)
    held_tokens = tokenize(held_captions, model.context_length)
    n_train = min(len(train_images), len(held_images))
    report = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_pairs": len(train_images),
        "heldout_pairs": len(held_images),
        "logit_scale": model.logit_scale.exp().item(),
        "heldout": retrieval_accuracy(model, held_images, held_tokens),
        "train_subset": retrieval_accuracy(
            model, train_images[:n_train], tokenize(train_captions[:n_train], model.context_length)
        ),
    }
    rows = _combination_rows(held_captions)
    if rows:
        report["heldout_combinations"] = retrieval_accuracy(model, held_images, held_tokens, rows=rows)
    return report


def train_and_report(
    data: str | os.PathLike = "data/emoji",
    out: str | os.PathLike = "runs/clip",
    steps: int = 500,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    config: str | os.PathLike = DEFAULT_CONFIG,
    threads: int = 1,
    seed: int = 0,
    precision: str = "bf16",
    eval_only: bool = False,
) -> dict:
    """What `ldm clip` does: train (unless eval_only), save clip.safetensors, measure it, write
    clip_metrics.json and CLIP_CARD.md into `out`; returns the report."""
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    data, out = Path(data), Path(out)
    weights = out / WEIGHTS_NAME
    metrics_file = out / "clip_metrics.json"
    if eval_only:
        if not metrics_file.is_file():
            raise MissingFileError(f"--eval-only needs the training figures in {metrics_file}")
        report = json.loads(metrics_file.read_text())
    else:
        model = create_clip(config)
        train_images, train_captions = load_split(data / "train", _image_size(model))
        start, cpu_start = time.time(), time.process_time()
        losses = train_clip(
            model,
            train_images,
            train_captions,
            steps,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            precision=precision,
        )
        seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
        save_clip(model, weights, metadata={"config": Path(config).name, "steps": str(steps)})
        window = max(1, min(25, len(losses) // 4))  # first and final windows never overlap
        report = {
            "steps": steps,
            "batch_size": min(batch_size, len(train_images)),
            "lr": lr,
            "weight_decay": weight_decay,
            "precision": precision,
            "threads": torch.get_num_threads(),
            "train_seconds": seconds,
            "train_cpu_seconds": cpu_seconds,
            "machine": platform.machine(),
            "torch": torch.__version__,
            "loss_window": window,
            "loss_first": sum(losses[:window]) / window,
            "loss_final": sum(losses[-window:]) / window,
        }
    # Measure what ships: the fp16 file reloaded into a fresh model.
    report.update(evaluate_clip(weights, data, config))
    metrics_file.write_text(json.dumps(report, indent=2) + "\n")
    _write_card(out / "CLIP_CARD.md", report)
    return report
