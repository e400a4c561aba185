"""Strict layers: the folders of ldm/ are the layers, and a module imports only from its own layer or below.

The order, bottom to top, is ORDER below (the one place it is written); every folder of the package must be in
it, so a new folder has to be placed. Imports are parsed with ast, not run, and every one counts: module-level,
inside functions, and under `if __name__ == "__main__":`. Modules loose in ldm/ (the lazy public API,
`python -m ldm`) sit above every folder. Besides layers, no two modules may import each other, directly or
round a circle.
"""

from __future__ import annotations

import ast
import tempfile
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ldm"
ORDER = (
    "core", "io", "diffusion", "models", "backends", "sampling", "adapters", "formats", "tasks", "toys", "data",
    "training", "evaluation", "interfaces",
)  # fmt: skip
TOP = "<api>"  # the modules loose in ldm/: __init__ (the public API, exported lazily) and __main__
LOOSE_LIMIT = 3
LINE_LIMIT = 400


def module_name(path: Path, package: Path = PACKAGE) -> str:
    return ".".join(path.relative_to(package).with_suffix("").parts)


def layer_of(name: str) -> str:
    """The layer of a dotted module name below ldm ("training.run" -> "training"): its first folder."""
    first = name.split(".")[0]
    return first if first in ORDER else TOP


def rank(layer: str) -> int:
    return ORDER.index(layer) if layer in ORDER else len(ORDER)


def ldm_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module below ldm) of every ldm import in the file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("ldm.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "ldm":
                found += [(node.lineno, f"ldm.{a.name}") for a in node.names]
            elif node.module.startswith("ldm."):
                found.append((node.lineno, node.module))
    return [(line, name[len("ldm.") :]) for line, name in found]


def submodule_imports(path: Path) -> list[tuple[int, str]]:
    """`from ldm.x import y` where y may be a module: (line, "x.y") for each name."""
    return [
        (node.lineno, f"{node.module[len('ldm.') :]}.{a.name}")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ldm.")
        for a in node.names
    ]


def modules_of(package: Path) -> dict[str, Path]:
    return {module_name(p, package).removesuffix(".__init__"): p for p in sorted(package.rglob("*.py"))}


def upward_imports(package: Path) -> list[str]:
    return [
        f"{name}:{line} imports ldm.{target} ({layer_of(target)} is above {layer_of(name)})"
        for name, path in modules_of(package).items()
        for line, target in ldm_imports(path)
        if rank(layer_of(target)) > rank(layer_of(name))
    ]


def circles(package: Path) -> list[list[str]]:
    """Groups of modules that import each other round a circle (strongly connected components, Tarjan)."""
    modules = modules_of(package)
    graph = {}
    for name, path in modules.items():
        targets = set()
        for _, target in ldm_imports(path) + submodule_imports(path):
            while target and target not in modules:  # `from ldm.x import y`: y may be a name, not a module
                target = target.rpartition(".")[0]
            parent = name.rpartition(".")[0]
            if target and target != name and target != parent and not name.startswith(target + "."):
                targets.add(target)
        graph[name] = sorted(targets)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_folder_is_a_layer_and_has_a_docstring():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(ORDER), f"place these folders in ORDER: {folders - set(ORDER)}; gone: {set(ORDER) - folders}"
    undocumented = [f for f in ORDER if not ast.get_docstring(ast.parse((PACKAGE / f / "__init__.py").read_text()))]
    assert not undocumented, f"say what belongs in these subpackages: {undocumented}"


def test_few_modules_stay_loose():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= LOOSE_LIMIT, loose


def test_no_upward_import():
    upward = upward_imports(PACKAGE)
    assert not upward, "\n".join(upward)


def test_no_circle():
    found = circles(PACKAGE)
    assert not found, found


def test_the_app_uses_no_command_code():
    """The app and the commands are both interfaces; what they share lives below them (e.g. ldm.core.devices)."""
    offenders = [
        f"{module_name(p)}:{line} imports ldm.{name}"
        for p in MODULES
        if module_name(p).startswith("interfaces.app")
        for line, name in ldm_imports(p)
        if name.startswith("interfaces.cli")
    ]
    assert not offenders, offenders


def test_test_factories_live_with_the_tests():
    assert not (PACKAGE / "testing.py").exists() and not (PACKAGE / "testing_editing.py").exists()
    assert (Path(__file__).parent / "factories.py").is_file()


def test_modules_stay_small():
    long = {module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > LINE_LIMIT}
    assert not long, f"modules over {LINE_LIMIT} lines: {long}"


def test_one_command_line_parser():
    """argparse is the CLI's (ldm/interfaces/cli/); no other module builds a parser of its own."""
    own_parsers = [
        module_name(p)
        for p in MODULES
        if "ArgumentParser(" in p.read_text() and not module_name(p).startswith("interfaces.cli")
    ]
    assert not own_parsers, own_parsers


def _planted(tmp: str, files: dict[str, str]) -> Path:
    package = Path(tmp) / "ldm"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_upward_imports_are_found():
    """The checker itself: an upward import counts inside a function and under the __main__ guard alike."""
    with tempfile.TemporaryDirectory() as tmp:
        package = _planted(
            tmp,
            {
                "core/__init__.py": '"""core"""\n',
                "core/m.py": "def f():\n    from ldm.training import run\n\n"
                "if __name__ == '__main__':\n    import ldm.interfaces.cli.main\n",
                "training/__init__.py": '"""training"""\n',
                "training/run.py": "",
            },
        )
        assert ldm_imports(package / "core" / "m.py") == [(2, "training"), (5, "interfaces.cli.main")]
        assert len(upward_imports(package)) == 2
    assert layer_of("training.run") == "training" and layer_of("interfaces.cli.common") == "interfaces"


def test_circles_are_found():
    with tempfile.TemporaryDirectory() as tmp:
        package = _planted(
            tmp,
            {
                "core/__init__.py": "",
                "core/a.py": "from ldm.core.b import x\n",
                "core/b.py": "def f():\n    from ldm.core import a\n",
                "core/c.py": "from ldm.core.a import y\n",
            },
        )
        assert circles(package) == [["core.a", "core.b"]]


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
    """Only the model's kind table (ldm/models/latent_diffusion.py) names the conditioning keys in code."""
    keys = {"crossattn", "hybrid", "hybrid-adm"}
    offenders = []
    for path in MODULES:
        if module_name(path) == "models.latent_diffusion":
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
