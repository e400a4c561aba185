"""Strict layers: a module imports only from its own layer or the ones below it (parsed with ast, not run).

    core -> models -> sampling -> tasks -> data -> training -> evaluation -> interfaces

Every module of the package must be in the table, so a new one has to be placed. Imports inside
`if __name__ == "__main__":` are an old entry point handing over to the CLI and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ldm"
ORDER = ("core", "models", "sampling", "tasks", "data", "training", "evaluation", "interfaces")
LAYERS = {
    # errors, configs, paths, devices, schedules and the parameterisation, files and images
    "core": (
        "__init__",
        "errors",
        "config",
        "defaults",
        "devices",
        "limits",
        "schedules",
        "diffusion",
        "checkpoint",
        "images",
        "infotext",
        "masks",
        "hf_clip",
        "formats",
        "convert",
        "tiling",
        "diffusers_keys",
        "diffusers_files",
        "skip_init",
        "distillation",
        "likelihood",
        "vdm",
        "variants",
        "controlnet_infotext",
    ),
    # networks and the model container (long_prompts: prompt chunks and emphasis for the text encoder;
    # diffusers_format/_export: diffusers folders, whose pipeline follows the model's conditioning kind)
    "models": (
        "attention",
        "unet",
        "vae",
        "text_encoder",
        "long_prompts",
        "clip",
        "conditioning",
        "model",
        "lora",
        "open_clip_parts",
        "lora_layers",
        "lora_kohya",
        "lora_merge",
        "embeddings",
        "diffusers_format",
        "diffusers_export",
        "derived",
        "controlnet",
        "controlnet_files",
    ),
    # samplers, guidance, sampling options and the one checked entry point
    "sampling": ("samplers", "denoisers", "sampling", "variance_sampler", "classifier_guidance"),
    # what a user asks for: txt2img, editing, walks (and the 2-D toys of the app)
    "tasks": (
        "tasks",
        "pipeline",
        "editing",
        "img2img",
        "inpaint",
        "upscale",
        "walk",
        "toy2d",
        "toy_vdm",
        "toy_classes",
        "toy_compare",
        "toy_files",
    ),
    "data": ("data", "degradations"),
    "training": ("training",),
    "evaluation": ("metrics", "evaluate", "evaluate_prompts", "evaluate_edits", "evaluate_likelihood"),
    "interfaces": ("cli", "commands", "app", "controlnet_cli"),
}
LINE_LIMIT = 400


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def layer_of(name: str) -> str | None:
    """The layer of a dotted module name below ldm ("training.run" -> "training"), by its longest listed prefix."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        for layer, modules in LAYERS.items():
            if prefix in modules:
                return layer
    return None


def _is_main_guard(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def ldm_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module below ldm) of every ldm import in the file, module-level or inside functions."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for top in tree.body if _is_main_guard(top) for n in ast.walk(top)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("ldm.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "ldm":
                found += [(node.lineno, f"ldm.{a.name}") for a in node.names]
            elif node.module.startswith("ldm."):
                found.append((node.lineno, node.module))
    return [(line, name[len("ldm.") :]) for line, name in found]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in MODULES if layer_of(module_name(p)) is None]
    assert not unplaced, f"place these modules in tests/test_layers.py LAYERS: {unplaced}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_no_upward_import(path):
    own = ORDER.index(layer_of(module_name(path)))
    upward = [
        f"{module_name(path)}:{line} imports ldm.{name} ({layer_of(name)})"
        for line, name in ldm_imports(path)
        if layer_of(name) is None or ORDER.index(layer_of(name)) > own
    ]
    assert not upward, "; ".join(upward)


def test_the_app_uses_no_command_code():
    """The app and the commands are both interfaces; what they share lives below them (e.g. ldm.core.devices)."""
    offenders = [
        f"{module_name(p)}:{line} imports ldm.{name}"
        for p in MODULES
        if module_name(p).startswith("app")
        for line, name in ldm_imports(p)
        if name.startswith("commands")
    ]
    assert not offenders, offenders


def test_test_factories_live_with_the_tests():
    assert not (PACKAGE / "testing.py").exists() and not (PACKAGE / "testing_editing.py").exists()
    assert (Path(__file__).parent / "factories.py").is_file()


def test_modules_stay_small():
    long = {module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > LINE_LIMIT}
    assert not long, f"modules over {LINE_LIMIT} lines: {long}"


def test_one_command_line_parser():
    """argparse is the CLI's (ldm/interfaces/cli/main.py and ldm/interfaces/cli/); no other module builds a parser of its own."""
    own_parsers = [
        module_name(p)
        for p in MODULES
        if "ArgumentParser(" in p.read_text() and not module_name(p).startswith(("cli", "commands"))
    ]
    assert not own_parsers, own_parsers


def test_upward_imports_are_found():
    """The checker itself: a lazy upward import inside a function counts, one under the __main__ guard does not."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "m.py"
        f.write_text(
            "def f():\n    from ldm.training import run\n\nif __name__ == '__main__':\n    import ldm.interfaces.cli.main\n"
        )
        assert ldm_imports(f) == [(2, "training")]
    assert layer_of("training.run") == "training" and layer_of("commands.common") == "interfaces"


def test_the_cli_lets_anything_but_its_own_errors_through(monkeypatch, capsys):
    """ldm's errors are one line and exit 2; a KeyError (or any other exception) is a bug and keeps its traceback."""
    from ldm.core.errors import InvalidOptionError
    from ldm.interfaces.cli import main as cli
    from ldm.interfaces.cli import txt2img

    def raising(exc):
        def run(args):
            raise exc

        return run

    monkeypatch.setattr(txt2img, "run", raising(KeyError("context")))
    with pytest.raises(KeyError):
        cli.main(["txt2img", "a cat"])
    monkeypatch.setattr(txt2img, "run", raising(InvalidOptionError("bad\nsecond line")))
    assert cli.main(["txt2img", "a cat"]) == 2
    assert capsys.readouterr().err.strip() == "ldm txt2img: error: bad"


def test_conditioning_keys_are_read_in_one_place():
    """Only ldm/models/latent_diffusion.py's kind table names the conditioning keys in code; everything else asks model.kind."""
    keys = {"crossattn", "hybrid", "hybrid-adm"}
    offenders = []
    for path in MODULES:
        if module_name(path) == "model":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            consts = []
            if isinstance(node, ast.Compare):
                consts = [node.left, *node.comparators]
            elif isinstance(node, ast.Dict):
                consts = [k for k in node.keys if k is not None]
            elif isinstance(node, (ast.Tuple, ast.Set, ast.List)) and isinstance(getattr(node, "ctx", None), ast.Load):
                consts = list(node.elts)
            if any(isinstance(c, ast.Constant) and c.value in keys for c in consts):
                offenders.append(f"{module_name(path)}:{node.lineno}")
    assert not offenders, offenders
