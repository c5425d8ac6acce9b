"""Imports run one way: commands -> train, metrics -> callers (sampling, objectives) -> integrators, guidance,
CUDA graphs, x_var and models -> ops -> math (solvers, losses, schedules, denoiser); integrations sit beside the
callers, below train. Read from the sources (every import, function-level ones included)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mcm_fast"
MATH = ("solvers", "losses", "schedules", "denoiser")
CALLERS = ("sampling", "objectives", "editing", "consistency", "train", "metrics", "commands", "demo", "cli")
FORBIDDEN = {  # module (or package) -> what it must not import
    **{name: ("ops", *CALLERS) for name in MATH},
    "ops": CALLERS,
    **{name: CALLERS for name in ("integrators", "guidance", "cuda_graphs", "x_var")},
    "models": (*CALLERS, "integrations"),
    "integrations": ("train", "metrics", "commands", "demo", "cli"),
    "metrics": ("train", "commands", "demo", "cli"),
    "train": ("commands", "demo", "cli"),
    "tensor_files": ("ops", "models", "integrations", "data", *CALLERS, *MATH),  # a leaf: files of tensors only
}


def imports(path: Path) -> set[str]:
    """The mcm_fast modules a source file imports, as dotted names below mcm_fast."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found |= {n.removeprefix("mcm_fast.") for n in names if n.startswith("mcm_fast.")}
    return found


@pytest.mark.parametrize("layer", FORBIDDEN)
def test_imports_run_one_way(layer):
    files = sorted((PACKAGE / layer).rglob("*.py")) if (PACKAGE / layer).is_dir() else [PACKAGE / f"{layer}.py"]
    assert files
    bad = {f"{f.relative_to(PACKAGE)} imports {name}" for f in files for name in imports(f)
           if name.split(".")[0] in FORBIDDEN[layer]}
    assert not bad, sorted(bad)


def test_no_module_imports_itself_through_others():
    """No import circle between the package's modules (a package's __init__ re-exporting its own modules aside)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {n for n in imports(path) if not name.startswith(n + ".") and n != name}
    graph = {name: {n for n in found if n in graph} for name, found in graph.items()}

    def circle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            name, path = stack.pop()
            for nxt in graph[name]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    circles = {" -> ".join(c) for c in map(circle_from, graph) if c}
    assert not circles, sorted(circles)
