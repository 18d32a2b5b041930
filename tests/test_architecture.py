"""The house's rules, checked: imports point down (import-linter's layers contract in pyproject),
no omni import hides inside a function, and no file grows past the size a reader takes in."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "omni"
MAX_LINES = 450


def lint_imports_command() -> list[str]:
    installed = Path(sys.executable).with_name("lint-imports")
    return [str(installed)] if installed.exists() else [shutil.which("lint-imports") or "lint-imports"]


def test_layers_contract_is_kept():
    result = subprocess.run(lint_imports_command(), capture_output=True, text=True, cwd=PACKAGE.parent,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def function_level_omni_imports(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """'file:line module' for each import of an omni module inside a function body."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            names = []
            if isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                names = [inner.module]
            elif isinstance(inner, ast.Import):
                names = [alias.name for alias in inner.names]
            found += [f"{path.relative_to(root)}:{inner.lineno} {n}"
                      for n in names if n == "omni" or n.startswith("omni.")]
    return found


def test_no_function_level_omni_imports():
    """A function-level import may only defer a slow optional library, never dodge a circle."""
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in function_level_omni_imports(path)]
    assert offenders == []


def test_the_check_sees_a_hidden_import(tmp_path):
    """The AST scan above finds what it looks for (so an empty result means something)."""
    sample = tmp_path / "probe.py"
    sample.write_text("import omni.config\n\ndef f():\n    from omni.train import train\n    return train\n")
    assert function_level_omni_imports(sample, tmp_path) == ["probe.py:4 omni.train"]


def test_no_file_over_the_size_limit():
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
