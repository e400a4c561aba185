"""ldm: a small latent diffusion toolkit compatible with Stable Diffusion 2.x.

The public API, importable from here and loaded only when first used (so `import ldm`, and the `ldm` command,
stay fast to start):

    from ldm import load_model, txt2img
    model = load_model()                      # the shipped emoji model
    images = txt2img(model, "red heart", steps=4)  # PIL images; images.settings says what ran

The package's folders are its layers (docs/architecture.md); everything else is imported from its own module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # pyproject.toml's [project] version; `ldm --version` prefers the installed one

# name -> the module that defines it: the one place the public API is listed
_PUBLIC = {
    "load_model": "ldm.formats.load",
    "txt2img": "ldm.tasks.txt2img",
    "img2img": "ldm.tasks.img2img",
    "inpaint": "ldm.tasks.inpaint",
    "outpaint": "ldm.tasks.inpaint",
    "upscale": "ldm.tasks.upscale",
    "walk_frames": "ldm.tasks.walk",
    "SamplingOptions": "ldm.sampling.options",
    "PromptOptions": "ldm.models.prompt_options",
    "LdmError": "ldm.core.errors",
}
__all__ = [  # the names of _PUBLIC (tests/test_public_api.py checks they agree)
    "LdmError", "PromptOptions", "SamplingOptions", "img2img", "inpaint", "load_model", "outpaint", "txt2img",
    "upscale", "walk_frames",
]  # fmt: skip

if TYPE_CHECKING:  # for type checkers and editors; at run time module __getattr__ below imports on first use
    from ldm.core.errors import LdmError
    from ldm.formats.load import load_model
    from ldm.models.prompt_options import PromptOptions
    from ldm.sampling.options import SamplingOptions
    from ldm.tasks.img2img import img2img
    from ldm.tasks.inpaint import inpaint, outpaint
    from ldm.tasks.txt2img import txt2img
    from ldm.tasks.upscale import upscale
    from ldm.tasks.walk import walk_frames


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module 'ldm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
