"""Contrastive training of a tiny CLIP on a captioned image folder (the emoji train split).

The model is open_clip's own `CLIP`, built from an open_clip-format JSON config, trained with
`open_clip.loss.ClipLoss`, so its weights load into open_clip (and into
`ldm.text_encoder.FrozenOpenCLIPEmbedder`) with open_clip's key names. The text tower is
standard (77 tokens, the stock 49408-token BPE vocabulary), so the bundled tokenizer works offline.

    python -m ldm.training.clip --data data/emoji --out checkpoints/emoji --steps 500
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool

from ldm.checkpoint import load_state_dict, save_state_dict
from ldm.errors import InvalidOptionError, LdmError, MissingFileError
from ldm.data.folder import CaptionedImageFolder

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "emoji" / "emoji-clip.json"
WEIGHTS_NAME = "clip.safetensors"
MAX_LOGIT_SCALE = math.log(100.0)  # open_clip's clamp: keeps the temperature from collapsing

log = logging.getLogger(__name__)


class ClipConfigError(LdmError, ValueError):
    """A CLIP model config that is missing or not in open_clip's format."""


class ClipDataError(LdmError, ValueError):
    """Image/caption pairs that cannot train a CLIP (too few, or not as many images as captions)."""


def create_clip(config_path: str | os.PathLike = DEFAULT_CONFIG) -> open_clip.CLIP:
    """A randomly initialised open_clip CLIP from an open_clip JSON config, registered under the file's stem."""
    path = Path(config_path)
    if not path.is_file():
        raise ClipConfigError(f"CLIP config not found: {path}")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ClipConfigError(f"CLIP config {path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= cfg.keys():
        raise ClipConfigError(f"CLIP config {path} needs the open_clip keys embed_dim, vision_cfg and text_cfg")
    open_clip.add_model_config(path)
    # open_clip warns that no pretrained weights were loaded; that is the point here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(path.stem, pretrained=None)
    finally:
        root.setLevel(level)
    return model


def load_clip(weights: str | os.PathLike, config_path: str | os.PathLike = DEFAULT_CONFIG) -> open_clip.CLIP:
    """The trained CLIP in fp32 eval mode: config -> model, then a strict load of the safetensors weights."""
    model = create_clip(config_path)
    state = load_state_dict(weights)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def save_clip(model: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """The state dict in fp16 safetensors, written atomically (temp file in the same folder, then os.replace)."""
    save_state_dict(model.state_dict(), path, metadata=metadata, float_dtype=torch.float16)


def tokenize(captions: list[str], context_length: int = 77) -> torch.Tensor:
    return open_clip.tokenize(captions, context_length=context_length)


def encode_text_trimmed(model: open_clip.CLIP, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """model.encode_text(tokens), computed only over the first positions up to the longest end-of-text token.

    With the causal mask and end-of-text pooling, positions after the pooled token cannot affect
    the result, so dropping them is exact; emoji captions are ~8 of 77 tokens, so it is much faster.
    """
    if model.text_pool_type not in ("argmax", "eos") or model.attn_mask is None:
        return model.encode_text(tokens, normalize=normalize)
    if model.text_pool_type == "argmax":
        last = tokens.argmax(dim=-1)
    else:
        last = (tokens == model.text_eos_id).int().argmax(dim=-1)
    n = int(last.max()) + 1
    tokens = tokens[:, :n]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if isinstance(model.text_projection, torch.nn.Linear):
        x = model.text_projection(x)
    elif model.text_projection is not None:
        x = x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def load_split(root: str | os.PathLike, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """All images of a captioned folder as one [N,3,S,S] tensor in [-1,1] (emoji fit in memory), and their captions."""
    ds = CaptionedImageFolder(root, size=image_size)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    return images, list(ds.captions)


@torch.no_grad()
def retrieval_accuracy(model: open_clip.CLIP, images: torch.Tensor, tokens: torch.Tensor,
                       rows: list[int] | None = None, batch_size: int = 256) -> dict[str, float]:
    """Text->image and image->text top-1/top-5 accuracy: caption i should find image i among all N (and back).

    rows restricts the scored queries (e.g. the held-out combinations); they are still ranked against all N.
    """
    was_training = model.training
    model.eval()
    img = torch.cat([model.encode_image(images[i:i + batch_size], normalize=True) for i in range(0, len(images), batch_size)])
    txt = torch.cat([encode_text_trimmed(model, tokens[i:i + batch_size]) for i in range(0, len(tokens), batch_size)])
    model.train(was_training)
    sim = txt @ img.T  # [texts, images]
    query = torch.arange(len(sim)) if rows is None else torch.tensor(rows, dtype=torch.long)
    k = min(5, len(sim))
    t2i = sim[query].topk(k, dim=1).indices
    i2t = sim.T[query].topk(k, dim=1).indices
    return {
        "n": len(query),
        "t2i_top1": (t2i[:, 0] == query).float().mean().item(), "t2i_top5": (t2i == query[:, None]).any(1).float().mean().item(),
        "i2t_top1": (i2t[:, 0] == query).float().mean().item(), "i2t_top5": (i2t == query[:, None]).any(1).float().mean().item(),
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
        raise ClipDataError(f"need at least 2 image/caption pairs of equal count, got {len(images)} images and {len(captions)} captions")
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
        idx = order[pos:pos + batch_size]
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
            log.info("step %d/%d  loss %.4f  lr %.2e  %.1fs", step + 1, steps, sum(recent) / len(recent), opt.param_groups[0]["lr"], time.time() - start)
    return losses


def _fmt_row(label: str, r: dict) -> str:
    return f"| {label} | {r['n']} | {r['t2i_top1']:.1%} | {r['t2i_top5']:.1%} | {r['i2t_top1']:.1%} | {r['i2t_top5']:.1%} |"


def _write_card(path: Path, report: dict) -> None:
    cpu = report.get("train_cpu_seconds")
    cpu_text = f", {cpu / 60:.1f} min CPU" if cpu is not None else ""
    lines = [
        "# emoji-clip: a tiny OpenCLIP trained on Noto Color Emoji",
        "",
        "Contrastive (CLIP) model trained from scratch by `python -m ldm.training.clip` on the train split of the",
        "emoji dataset (`python scripts/make_emoji_dataset.py`: Noto Color Emoji renders, 64x64, captioned with their",
        "English CLDR names). Its text tower is the text encoder of the project's small pretrained emoji diffusion model.",
        "",
        "- Config: `configs/emoji/emoji-clip.json` (open_clip format; `open_clip.add_model_config(path)` then",
        "  `open_clip.create_model(\"emoji-clip\")`, or `ldm.training.clip.load_clip(weights)`).",
        f"- Weights: `{WEIGHTS_NAME}`, fp16 safetensors, open_clip `CLIP` state dict keys ({report['parameters']:,} parameters;",
        "  the text tower is everything outside `visual.*`).",
        "- Tokenizer: open_clip's bundled BPE (`open_clip.tokenize`), context length 77.",
        "- Font: Noto Color Emoji (SIL Open Font License 1.1); captions: Unicode CLDR names from `emoji-test.txt`.",
        "",
        "## Training (measured)",
        "",
        f"- Command: `python -m ldm.training.clip --data data/emoji --out checkpoints/emoji --steps {report['steps']} "
        f"--batch-size {report['batch_size']} --precision {report.get('precision', 'fp32')}` (seed 0)",
        f"- Train pairs: {report['train_pairs']}; held-out pairs: {report['heldout_pairs']}",
        f"- Steps: {report['steps']}, batch {report['batch_size']}, AdamW lr {report['lr']} with warmup + cosine, weight decay {report['weight_decay']}",
        f"- Time: {report['train_seconds'] / 60:.1f} min wall{cpu_text}, {report['threads']} thread(s), "
        f"{report.get('precision', 'fp32')} forward pass ({report['machine']}), torch {report['torch']}",
        f"- Train loss (mean of the first / last {report['loss_window']} steps): {report['loss_first']:.3f} -> {report['loss_final']:.3f}",
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
        "emoji of the list (faces and people that differ only in skin tone or gender), hence harder than a random sample.",
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


def evaluate_clip(weights: str | os.PathLike, data_dir: str | os.PathLike, config_path: str | os.PathLike = DEFAULT_CONFIG) -> dict:
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
        "train_pairs": len(train_images), "heldout_pairs": len(held_images),
        "logit_scale": model.logit_scale.exp().item(),
        "heldout": retrieval_accuracy(model, held_images, held_tokens),
        "train_subset": retrieval_accuracy(model, train_images[:n_train], tokenize(train_captions[:n_train], model.context_length)),
    }
    rows = _combination_rows(held_captions)
    if rows:
        report["heldout_combinations"] = retrieval_accuracy(model, held_images, held_tokens, rows=rows)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a tiny OpenCLIP on a captioned image folder with train/ and heldout/ splits.")
    parser.add_argument("--data", default="data/emoji", help="dataset root with train/ and heldout/ (default: data/emoji)")
    parser.add_argument("--out", default="checkpoints/emoji", help="output folder for clip.safetensors, clip_metrics.json, CLIP_CARD.md")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="open_clip model config JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="autocast for the forward pass (default bf16)")
    parser.add_argument("--eval-only", action="store_true",
                        help="re-measure <out>/clip.safetensors and rewrite the card, keeping the training figures of clip_metrics.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    data, out = Path(args.data), Path(args.out)
    weights = out / WEIGHTS_NAME
    metrics_file = out / "clip_metrics.json"
    try:
        if args.eval_only:
            if not metrics_file.is_file():
                raise MissingFileError(f"--eval-only needs the training figures in {metrics_file}")
            report = json.loads(metrics_file.read_text())
        else:
            model = create_clip(args.config)
            train_images, train_captions = load_split(data / "train", _image_size(model))
            start, cpu_start = time.time(), time.process_time()
            losses = train_clip(model, train_images, train_captions, args.steps, batch_size=args.batch_size,
                                lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, precision=args.precision)
            seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
            save_clip(model, weights, metadata={"config": Path(args.config).name, "steps": str(args.steps)})
            window = max(1, min(25, len(losses) // 4))  # first and final windows never overlap
            report = {
                "steps": args.steps, "batch_size": min(args.batch_size, len(train_images)), "lr": args.lr,
                "weight_decay": args.weight_decay, "precision": args.precision, "threads": torch.get_num_threads(),
                "train_seconds": seconds, "train_cpu_seconds": cpu_seconds, "machine": platform.machine(),
                "torch": torch.__version__, "loss_window": window,
                "loss_first": sum(losses[:window]) / window, "loss_final": sum(losses[-window:]) / window,
            }
        # Measure what ships: the fp16 file reloaded into a fresh model.
        report.update(evaluate_clip(weights, data, args.config))
    except LdmError as exc:  # bad options, data, configs and checkpoints; anything else is a bug and keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics_file.write_text(json.dumps(report, indent=2) + "\n")
    _write_card(out / "CLIP_CARD.md", report)
    h = report["heldout"]
    print(f"{report['steps']} steps in {report['train_seconds'] / 60:.1f} min, final loss {report['loss_final']:.3f}; "
          f"held-out text->image top-1 {h['t2i_top1']:.1%}, top-5 {h['t2i_top5']:.1%} ({h['n']} pairs) -> {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
