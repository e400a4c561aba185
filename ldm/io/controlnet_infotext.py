"""The ControlNets of an image's settings (`controls`, ldm.interfaces.cli.controlnet_args) in A1111's parameters text,
as its
ControlNet extension writes them, one field per unit:

    ControlNet 0: "Module: none, Model: canny, Weight: 0.8, Resize Mode: Crop and Resize, Guidance Start: 0, ..."

(the control image was made beforehand, so no preprocessor ran: "Module: none"). Only written: A1111's text has no
control image, so --from-png takes the ControlNets from our own JSON settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RESIZE_NAMES = {"stretch": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}
MODE_NAMES = {
    "balanced": "Balanced",
    "prompt": "My prompt is more important",
    "control": "ControlNet is more important",
}


def _number(value: Any, default: float) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return f"{default:g}"


def controlnet_fields(settings: dict[str, Any]) -> dict[str, str]:
    """{"ControlNet i": its unit's text} for each ControlNet the settings record ({} without any)."""
    records = settings.get("controls")
    if not isinstance(records, list):
        return {}
    fields = {}
    for index, record in enumerate(r for r in records if isinstance(r, dict)):
        unit = {
            "Module": "none",
            "Model": Path(str(record.get("controlnet", ""))).stem,
            "Weight": _number(record.get("weight"), 1.0),
            "Resize Mode": RESIZE_NAMES.get(str(record.get("resize", "stretch")), "Just Resize"),
            "Guidance Start": _number(record.get("start"), 0.0),
            "Guidance End": _number(record.get("end"), 1.0),
            "Control Mode": MODE_NAMES.get(str(record.get("mode", "balanced")), "Balanced"),
        }
        fields[f"ControlNet {index}"] = ", ".join(f"{key}: {value}" for key, value in unit.items())
    return fields
