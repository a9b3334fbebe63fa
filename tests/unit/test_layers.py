"""The house's floors, read from the import graph: imports go down, never up.

Ground floor: ports, errors, storage, console, distributed, config (in that order: a later one
may use an earlier one). Then data/, model/ and evaluate/, each using only the ground floor and
itself. Then metrics, then train/, then pretrained, then sweep, demo (and the like), then report
(which reads a sweep's results) and jobs (which checks a sweep job's spec), then the cli.
Also: model/ and evaluate/ know nothing of Ray or DeepSpeed, and inference imports neither.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mmpretrain

PACKAGE = Path(mmpretrain.__file__).parent
GROUND = ["ports", "errors", "storage", "console", "distributed", "config"]
MIDDLE = ["data", "model", "evaluate"]
FLOOR = {
    **{name: (0, index) for index, name in enumerate(GROUND)},
    **{name: (1, 0) for name in MIDDLE},
    "metrics": (2, 0),
    "train": (3, 0),
    "pretrained": (4, 0),  # inference: on train/checkpoint's Ray-free modules
    "sweep": (5, 0),  # beside demo and jobs, on train/
    "report": (5, 1),  # above sweep: a sweep's report reads sweep/results.py's ranking
    "jobs": (5, 2),  # above sweep: a sweep job's spec is checked by sweep/spec.py
    "cli": (6, 0),
    "__main__": (7, 0),
    "": (7, 0),  # the package's __init__ (mmpretrain.load_pretrained)
}
TOP = (5, 0)  # demo, and what sits on train/ beside it


def unit_of(module: str) -> str:
    """``mmpretrain.train.checkpoint.save`` -> ``train``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of the project in a file, lazy ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("mmpretrain.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mmpretrain":  # from mmpretrain import distributed
                found += [(node.lineno, f"mmpretrain.{a.name}") for a in node.names]
            elif node.module.startswith("mmpretrain."):
                found.append((node.lineno, node.module))
    return found


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        out.append((".".join(relative.parts).removesuffix(".__init__"), path))
    return out


def test_imports_go_down_never_up() -> None:
    upward = []
    for module, path in modules():
        here = unit_of(module)
        floor = FLOOR.get(here, TOP)
        for line, imported in project_imports(path):
            there = unit_of(imported)
            if there == here or FLOOR.get(there, TOP) < floor:
                continue
            upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}")
    assert not upward, "imports that go up or sideways:\n" + "\n".join(upward)


def test_the_floor_checker_sees_an_upward_import() -> None:
    """The test above would pass vacuously if the parser missed imports."""
    config_imports = dict(project_imports(PACKAGE / "config" / "run.py"))
    assert "mmpretrain.storage" in config_imports.values()
    assert FLOOR[unit_of("mmpretrain.train.loop")] > FLOOR[unit_of("mmpretrain.data.pipeline")]


@pytest.mark.parametrize("package", ["model", "evaluate"])
def test_model_and_evaluation_know_no_ray_or_deepspeed(package: str) -> None:
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("ray", "deepspeed"), f"{path}: {name}"


@pytest.mark.parametrize(
    ("modules", "absent"),
    [
        # load_pretrained promises a plain PyTorch model.
        ("mmpretrain.pretrained", ("ray", "deepspeed")),
        # A sweep's table and report are read on a laptop from a copied folder.
        ("mmpretrain.sweep.results, mmpretrain.report.sweep", ("ray", "deepspeed", "torch")),
    ],
)
def test_light_entry_points_load_no_heavy_library(modules: str, absent: tuple[str, ...]) -> None:
    """Checked in a fresh interpreter, where nothing else has imported them already."""
    probe = f"import sys, {modules}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
