"""--control for the image commands: IMAGE[:CONTROLNET][:WEIGHT[:START:END]], repeatable, recorded in the PNG
metadata (`controls`) and read back by --from-png. Without CONTROLNET the shipped default model's canny ControlNet
(ldm.core.defaults.DEFAULT_CONTROLNET) is used, where the model is the shipped default one."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ldm.core.defaults import DEFAULT_CONTROLNET, default_controlnet_path
from ldm.core.errors import InvalidOptionError, MissingFileError
from ldm.formats.controlnet_files import load_controlnet
from ldm.io.control_images import read_control_image
from ldm.models.controlnet import CONTROL_MODES, RESIZE_MODES, Control, ControlNet, check_control_numbers

CONTROL_HELP = (
    "spatial control by a ControlNet (original or diffusers layout, file or folder, made for this model's family; "
    "left out with the shipped default model: its canny ControlNet, for edge maps as `ldm control-image --type "
    "canny` makes them): its control image (an edge map, depth map, pose, ... at any size, resized to the output's), "
    "its weight "
    "(default 1) and the fraction of the steps it acts in (default 0:1, A1111's guidance start/end); repeat for "
    "several, each with its own image and weight"
)


@dataclass(frozen=True)
class ControlSpec:
    image: str
    controlnet: str
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    resize: str = "stretch"
    mode: str = "balanced"

    def record(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "controlnet": self.controlnet,
            "weight": self.weight,
            "start": self.start,
            "end": self.end,
            "resize": self.resize,
            "mode": self.mode,
        }


def add_control_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--control", action="append", default=[], metavar="IMAGE[:CONTROLNET][:WEIGHT[:START:END]]", help=CONTROL_HELP
    )
    p.add_argument(
        "--control-resize",
        choices=RESIZE_MODES,
        default="stretch",
        help="how a control image of another shape becomes the output's size: stretch (as diffusers; "
        "A1111's Just Resize), crop (cover, centre-crop: Crop and Resize) or fill (fit, black "
        "borders: Resize and Fill)",
    )
    p.add_argument("--control-mode", choices=CONTROL_MODES, default="balanced", help=CONTROL_MODE_HELP)


CONTROL_MODE_HELP = (
    "A1111's control modes: balanced (the residuals as they are, both sides of guidance), prompt (My prompt is more "
    "important: the deeper residuals weigh more, 0.825 ** (12 - i)) or control (ControlNet is more important: so "
    "weighed, on the conditional side of guidance alone)"
)


def split_control_spec(spec: str) -> tuple[list[str], list[float]]:
    """IMAGE[:CONTROLNET][:WEIGHT[:START:END]] -> ([IMAGE, CONTROLNET] or [IMAGE], the numbers)."""
    parts = spec.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 3:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts = parts[:-1]
    return parts, numbers


def resolved_controlnet(net: str) -> str:
    """The shipped ControlNet's name ("checkpoints/emoji/...") as the file inside the installed package; other
    paths as they are."""
    return str(default_controlnet_path()) if net == DEFAULT_CONTROLNET and not Path(net).exists() else net


def names_no_controlnet(spec: str) -> bool:
    """Whether a --control spec leaves the ControlNet out (IMAGE or IMAGE:WEIGHT...)."""
    return len(split_control_spec(spec)[0]) == 1


def parse_control_spec(
    spec: str, resize: str = "stretch", mode: str = "balanced", default_net: str | Path | None = None
) -> ControlSpec:
    """IMAGE[:CONTROLNET][:WEIGHT[:START:END]] -> ControlSpec, its files checked to exist, its numbers in range;
    without CONTROLNET `default_net` (None: the spec must name one)."""
    parts, numbers = split_control_spec(spec)
    if len(parts) == 1 and parts[0] and default_net is None:
        raise InvalidOptionError(
            f"--control {spec!r} names no ControlNet, which only the shipped default text-to-image model has: "
            "give IMAGE:CONTROLNET[:WEIGHT[:START:END]], e.g. edges.png:canny.safetensors"
        )
    if len(parts) == 1 and parts[0]:
        parts = [parts[0], str(default_net)]
    if len(parts) != 2 or not all(parts) or len(numbers) == 2:
        raise InvalidOptionError(
            f"--control {spec!r}: give IMAGE:CONTROLNET[:WEIGHT[:START:END]], "
            "e.g. edges.png:canny.safetensors:0.8 or edges.png:canny.safetensors:1:0:0.5"
        )
    image, net = parts
    if not Path(image).is_file():
        raise MissingFileError(f"control image not found: {image}")
    if not Path(resolved_controlnet(net)).exists():
        raise MissingFileError(f"ControlNet file not found: {net}")
    control = ControlSpec(image, net, *numbers, resize=resize, mode=mode)
    check_control_numbers(control.weight, control.start, control.end)
    return control


def load_controls(specs: list[ControlSpec], model: torch.nn.Module) -> list[Control]:
    """The Controls of the specs for `model`; a ControlNet named twice is loaded once."""
    nets: dict[str, ControlNet] = {}
    controls = []
    for spec in specs:
        if spec.controlnet not in nets:
            nets[spec.controlnet] = load_controlnet(resolved_controlnet(spec.controlnet), model)
        controls.append(
            Control(
                nets[spec.controlnet],
                read_control_image(spec.image),
                spec.weight,
                spec.start,
                spec.end,
                name=Path(spec.controlnet).name,
                resize=spec.resize,
                mode=spec.mode,
            )
        )
    return controls


def control_specs(args: argparse.Namespace, shipped_controlnet: bool = True) -> list[ControlSpec]:
    """--control's specs, checked (a missing file fails before the model loads). A spec without its ControlNet takes
    the shipped default model's where the model is that one (no --config/--ckpt, and `shipped_controlnet`: the
    command's shipped model is the text-to-image one); args.control is then rewritten with the file, which the
    image's metadata records."""
    resize = getattr(args, "control_resize", None) or "stretch"
    mode = getattr(args, "control_mode", None) or "balanced"
    shipped = shipped_controlnet and not getattr(args, "config", None) and not getattr(args, "ckpt", None)
    # The shipped file goes by its name inside the package, so an image's metadata remakes on any machine.
    default_net = DEFAULT_CONTROLNET if shipped and default_controlnet_path() is not None else None
    specs = [parse_control_spec(spec, resize, mode, default_net) for spec in getattr(args, "control", None) or []]
    if specs:
        args.control = [control_arg(spec) for spec in specs]
    return specs


def control_arg(spec: ControlSpec) -> str:
    return f"{spec.image}:{spec.controlnet}:{spec.weight}:{spec.start}:{spec.end}"


def attach_controls(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """Load --control's ControlNets onto the model for the rest of the command (it lives for this command only);
    returns what the metadata records ({} without --control)."""
    specs = control_specs(args)
    if not specs:
        return {}
    if not hasattr(model.unet, "input_blocks"):
        raise InvalidOptionError("--control needs a U-Net model")
    controls = load_controls(specs, model)
    for control in controls:
        control.net.to(next(model.unet.parameters()).device, model.unet.dtype).eval()
    model.controls = controls
    return {"controls": [spec.record() for spec in specs]}


def control_args_from_settings(settings: dict[str, Any]) -> list[str]:
    """--control values for the `controls` an image's settings record (--from-png)."""
    records = settings.get("controls") or []
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InvalidOptionError("the image's settings hold controls that are not a list of ControlNet records")
    specs = []
    for record in records:
        try:
            specs.append(
                f"{record['image']}:{record['controlnet']}:{float(record.get('weight', 1.0))}:"
                f"{float(record.get('start', 0.0))}:{float(record.get('end', 1.0))}"
            )
        except (KeyError, TypeError, ValueError):
            raise InvalidOptionError(
                f"the image's settings hold a ControlNet record without image, controlnet or numbers: {record!r:.80}"
            ) from None
    return specs


def apply_control_settings(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    """--from-png: the image's ControlNets with their resize and control modes, unless --control is given."""
    if args.control:
        return
    args.control = control_args_from_settings(settings)
    records = settings.get("controls") or []
    for key, default, attr in (("resize", "stretch", "control_resize"), ("mode", "balanced", "control_mode")):
        values = {record.get(key, default) for record in records}
        if len(values) > 1:
            raise InvalidOptionError(
                f"the image's ControlNets differ in {key} ({sorted(map(str, values))}); give "
                f"them with --control and --{attr.replace('_', '-')}"
            )
        if values:
            setattr(args, attr, values.pop())
