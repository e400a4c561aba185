"""open_clip's tokenizer and text transformer without running open_clip's package `__init__`.

Importing any part of open_clip runs its `__init__`, which builds the model zoo: timm, Hugging Face
transformers and hub clients, torchvision (whose ops pull torch._dynamo and sympy). That costs about as
much as importing torch itself, and text-to-image needs none of it: only `open_clip/tokenizer.py` and
`open_clip/transformer.py` (with the two small modules it imports), which are pure PyTorch.

`parts()` registers `open_clip` in sys.modules as the real package, made from its real spec, whose
`__init__` is deferred: submodules import as usual (their code is open_clip's own, unchanged), and the
first use of anything else of the package (`open_clip.create_model`, `open_clip.model`, ...) runs the
`__init__` in that same module object, as `import open_clip` would have. Afterwards the process is in the
state a plain `import open_clip` leaves. Nothing here copies or changes open_clip's code.

Two imports are bridged. open_clip/utils.py binds torchvision's `FrozenBatchNorm2d` at import (used only to
freeze a ResNet image tower's batch norms, never by the text tower). While the `__init__` is deferred that
name is a stand-in that imports torchvision's class when called; running the `__init__` puts the real
class back. open_clip/tokenizer.py imports ftfy (~50-90 ms CPU: its character tables, wcwidth) for `ftfy.fix_text`,
which leaves printable ASCII without "&" unchanged: every one of its fixes needs a non-ASCII character, a control
character or an HTML entity. Its `ftfy` is a stand-in that returns such text as it is and hands any other text
to the real ftfy, imported then; running the `__init__` puts the real module back.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from typing import Any

_TORCHVISION_MISC = "torchvision.ops.misc"
_FTFY_LEAVES_AS_IS = re.compile(r"[ -%'-~]*")  # printable ASCII (0x20-0x7e) but "&" (0x26)


def _frozen_batch_norm_2d(*args: Any, **kwargs: Any) -> Any:
    """Stand-in for torchvision's FrozenBatchNorm2d in open_clip.utils until open_clip's `__init__` runs."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    return FrozenBatchNorm2d(*args, **kwargs)


def _fix_text(text: str, *args: Any, **kwargs: Any) -> Any:
    """ftfy.fix_text, without importing ftfy for text it leaves as it is (default settings)."""
    if not args and not kwargs and isinstance(text, str) and _FTFY_LEAVES_AS_IS.fullmatch(text):
        return text
    import ftfy

    return ftfy.fix_text(text, *args, **kwargs)


def _ftfy_bridge() -> types.ModuleType:
    bridge = types.ModuleType("ftfy", "ldm.models.open_clip_parts' stand-in: ftfy.fix_text, ftfy imported when needed")
    bridge.fix_text = _fix_text
    return bridge


def _run_init(package: types.ModuleType) -> None:
    """Execute open_clip's real `__init__` in the already registered package module."""
    package.__dict__.pop("__getattr__", None)
    package.__spec__.loader.exec_module(package)
    utils = sys.modules.get("open_clip.utils")
    if utils is not None and getattr(utils, "FrozenBatchNorm2d", None) is _frozen_batch_norm_2d:
        from torchvision.ops.misc import FrozenBatchNorm2d

        utils.FrozenBatchNorm2d = FrozenBatchNorm2d
    tokenizer_module = sys.modules.get("open_clip.tokenizer")
    if tokenizer_module is not None and getattr(tokenizer_module.ftfy, "fix_text", None) is _fix_text:
        import ftfy

        tokenizer_module.ftfy = ftfy


def _deferred_package() -> types.ModuleType:
    """open_clip as registered in sys.modules: the real package, its `__init__` run on first use."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.loader is None:
        raise ImportError("open_clip is not installed")
    package = importlib.util.module_from_spec(spec)

    def __getattr__(name: str) -> Any:
        if name.startswith("__") and name not in ("__version__", "__all__"):  # probes (import machinery, tools)
            raise AttributeError(name)
        _run_init(package)
        return getattr(package, name)

    package.__getattr__ = __getattr__
    sys.modules["open_clip"] = package
    return package


def is_deferred() -> bool:
    """True while open_clip is registered but its `__init__` has not run (only parts are loaded)."""
    package = sys.modules.get("open_clip")
    return package is not None and "__getattr__" in package.__dict__


def _import_utils() -> None:
    """Import open_clip.utils with FrozenBatchNorm2d bridged, unless torchvision's ops are already loaded."""
    if "open_clip.utils" in sys.modules or _TORCHVISION_MISC in sys.modules:
        importlib.import_module("open_clip.utils")
        return
    bridge = types.ModuleType(_TORCHVISION_MISC)
    bridge.FrozenBatchNorm2d = _frozen_batch_norm_2d
    sys.modules[_TORCHVISION_MISC] = bridge
    try:
        importlib.import_module("open_clip.utils")
    finally:
        if sys.modules.get(_TORCHVISION_MISC) is bridge:
            del sys.modules[_TORCHVISION_MISC]


def transformer() -> types.ModuleType:
    """open_clip.transformer (TextTransformer, QuickGELU, text_global_pool, ...), open_clip's own module."""
    _deferred_package()
    _import_utils()
    return importlib.import_module("open_clip.transformer")


def tokenizer() -> types.ModuleType:
    """open_clip.tokenizer (its module-level `_tokenizer` is CLIP's BPE tokenizer), open_clip's own module."""
    package = _deferred_package()
    if "open_clip.tokenizer" in sys.modules or "ftfy" in sys.modules or "__getattr__" not in package.__dict__:
        return importlib.import_module("open_clip.tokenizer")
    bridge = _ftfy_bridge()
    sys.modules["ftfy"] = bridge
    try:
        return importlib.import_module("open_clip.tokenizer")
    finally:
        if sys.modules.get("ftfy") is bridge:
            del sys.modules["ftfy"]


def full() -> types.ModuleType:
    """The whole open_clip package, its `__init__` run (model zoo, factory, ...)."""
    package = _deferred_package()
    if "__getattr__" in package.__dict__:
        _run_init(package)
    return package
