"""The shape of the package: one seam for the CPU, no import cycles, pure parts that load no MLX."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlx_minicpmv"


def module_name(file: Path) -> str:
    parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(file: Path, modules: set) -> set:
    """The package's modules that ``file`` imports, at any depth of the file (lazy imports too)."""
    name = module_name(file)
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            for alias in node.names:  # ``from . import x`` names a module when x is one
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found |= {n for n in names if n in modules}
    return found - {name}


def test_no_import_cycles():
    files = {module_name(f): f for f in PACKAGE.rglob("*.py")}
    graph = {name: imports(file, set(files)) for name, file in files.items()}
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for other in sorted(graph.get(name, ())):
            # a package's __init__ runs before its modules; its own imports of them are not a cycle
            if not other.startswith(name + "."):
                visit(other)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_no_device_check_outside_the_cpu_seam():
    """The model reads the same on every backend: only mlx_minicpmv/cpu asks where MLX runs."""
    checks = ("default_device", "mx.cpu", "mx.gpu", "metal", "sys.platform")
    found = [f"{f.relative_to(PACKAGE)}:{i}: {line.strip()}"
             for f in PACKAGE.rglob("*.py") if "cpu" not in f.relative_to(PACKAGE).parts[:1]
             for i, line in enumerate(f.read_text().splitlines(), 1)
             if any(c in line for c in checks) and not line.lstrip().startswith("#")]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module", ["mlx_minicpmv.errors", "mlx_minicpmv.files", "mlx_minicpmv.downsample",
                                    "mlx_minicpmv.cpu", "mlx_minicpmv.grounding",
                                    "mlx_minicpmv.summary.export"])
def test_pure_parts_import_without_mlx(module):
    code = f"import sys, {module}; sys.exit(any(m == 'mlx' or m.startswith('mlx.') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent).returncode == 0


def test_errors_are_exported_from_one_module():
    import mlx_minicpmv
    from mlx_minicpmv import errors, loading, processing
    from mlx_minicpmv.generate import stream_generate

    for name in ("CheckpointError", "ContextError", "MediaError"):
        assert getattr(mlx_minicpmv, name) is getattr(errors, name) and issubclass(getattr(errors, name), ValueError)
    assert loading.CheckpointError is errors.CheckpointError and processing.MediaError is errors.MediaError
    assert mlx_minicpmv.stream_generate is stream_generate and callable(mlx_minicpmv.generate)


def test_the_switch(monkeypatch):
    import mlx.core as mx

    from mlx_minicpmv.cpu import seam

    on_cpu = mx.default_device() == mx.cpu  # elsewhere (Metal) the seam never applies
    monkeypatch.delenv(seam.ENV, raising=False)
    assert seam.applies() is on_cpu and seam.applies(True) is on_cpu and not seam.applies(False)
    monkeypatch.setenv(seam.ENV, "off")
    assert not seam.applies() and not seam.applies(False)
    assert seam.applies(True) is on_cpu, "an explicit argument wins over the environment"
    monkeypatch.setenv(seam.ENV, "sometimes")
    with pytest.raises(ValueError, match="MLX_MINICPMV_CPU_KERNELS='sometimes' is neither on nor off"):
        seam.applies()


def test_load_honours_the_environment_switch(tiny, monkeypatch):
    from mlx_minicpmv import load

    monkeypatch.setenv("MLX_MINICPMV_CPU_KERNELS", "off")
    model, _ = load(tiny.mlx_path)
    assert not any(type(m).__module__.startswith("mlx_minicpmv.cpu") for _, m in model.named_modules())


def test_worker_signals_reach_the_window_through_its_methods():
    """A worker signal connected to a lambda runs the lambda on the worker's thread (it has no
    receiver object for Qt to queue to); a widget touched from there crashed the app in CI."""
    app = PACKAGE.parent / "app"
    found = []
    for file in sorted(app.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "connect" and node.args
                    and isinstance(node.args[0], ast.Lambda)):
                continue
            source = ast.unparse(node.func.value)
            if source.startswith(("w.", "self.worker.", "worker.")):
                found.append(f"{file.name}:{node.lineno} {source}")
    assert not found, found
    # The check itself: it sees the pattern it forbids.
    bad = ast.parse("w.loading.connect(lambda p: picker.set_busy(p))").body[0].value
    assert isinstance(bad.args[0], ast.Lambda) and ast.unparse(bad.func.value).startswith("w.")
