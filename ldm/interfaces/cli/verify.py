"""ldm verify DIR: make every PNG in a folder again from its own metadata and say whether it came out the same.

Each image is re-made as `ldm txt2img --from-png IMAGE` makes it (the same settings read, the same checks, the same
model choice), into a scratch folder, and compared pixel for pixel: "exact", or its PSNR against the original. A PNG
without generation settings is reported as "no metadata" and the others go on; one that cannot be re-made (made
from an image, a model that is not here) says why in one line. The exit status is 1 when any image is not exact.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from ldm.core.errors import InvalidOptionError, LdmError, MissingFileError, one_line

log = logging.getLogger("ldm")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="re-make a folder's PNGs from their metadata and check they come out the same",
        description="Every PNG in FOLDER is made again from its own settings, as txt2img --from-png makes it, and "
        "compared with the original: bit-exact, or its PSNR. Exit status 1 when any image is not exact.",
    )
    p.add_argument("folder", help="a folder of PNGs made by ldm (e.g. outputs/samples)")
    p.add_argument("--config", help="the model config YAML to re-make them with (default: as --from-png chooses)")
    p.add_argument("--ckpt", help="the model weights to re-make them with")
    p.add_argument("--device", help="cpu, cuda, ... (default: txt2img's)")
    p.set_defaults(func=run)


def _txt2img_parser() -> argparse.ArgumentParser:
    from ldm.interfaces.cli import txt2img

    parser = argparse.ArgumentParser(prog="ldm")
    txt2img.register(parser.add_subparsers(dest="command"))
    return parser


def verify_one(path: Path, args: argparse.Namespace, parser: argparse.ArgumentParser, scratch: Path) -> str | None:
    """The verdict on one image: "exact", "differs: PSNR ...", a reason it was not re-made, or None (no metadata)."""
    import numpy as np
    from PIL import Image

    from ldm.evaluation.metrics import psnr
    from ldm.interfaces.cli import txt2img
    from ldm.io.infotext import InfotextError, settings_from_png

    try:
        settings_from_png(path)
    except InfotextError as exc:
        if "holds no generation settings" in str(exc):
            return None
        return f"not re-made: {one_line(exc)}"
    argv = ["txt2img", "--from-png", str(path), "--outdir", str(scratch), "--no-grid", "--no-progress"]
    for flag in ("config", "ckpt", "device"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", getattr(args, flag)]
    try:
        txt2img.run(parser.parse_args(argv))
    except LdmError as exc:
        return f"not re-made: {one_line(exc)}"
    with Image.open(path) as original, Image.open(scratch / "samples" / "00000.png") as made:
        a, b = np.asarray(original.convert("RGB")), np.asarray(made.convert("RGB"))
    if a.shape != b.shape:
        return f"differs: {b.shape[1]}x{b.shape[0]} px made, {a.shape[1]}x{a.shape[0]} px in the file"
    if np.array_equal(a, b):
        return "exact"
    return f"differs: PSNR {psnr(a, b, data_range=255):.2f} dB"


def run(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise MissingFileError(f"folder not found: {folder}")
    pngs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not pngs:
        raise InvalidOptionError(f"{folder} holds no PNG images")
    parser = _txt2img_parser()
    verdicts: dict[str, str | None] = {}
    with tempfile.TemporaryDirectory(prefix="ldm-verify-") as scratch:
        for number, path in enumerate(pngs):
            verdict = verify_one(path, args, parser, Path(scratch) / str(number))
            verdicts[path.name] = verdict
            print(f"{path.name}: {verdict or 'no metadata'}", flush=True)
    checked = [v for v in verdicts.values() if v is not None]
    if not checked:
        raise InvalidOptionError(f"no PNG in {folder} holds generation settings (ldm or A1111 metadata)")
    exact = sum(v == "exact" for v in checked)
    print(
        f"{exact} of {len(checked)} re-made exactly"
        + (f", {len(pngs) - len(checked)} without metadata" if len(checked) < len(pngs) else "")
    )
    return 0 if exact == len(checked) else 1
