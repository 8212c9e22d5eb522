"""The package's dependency rules, read from the import statements:

- a model family (gpt, encoder, vit, ...) imports no other family;
- the shared packages (nn, tokenizers, run, and the top-level modules
  checkpoint, data, device, cuda, ops, errors) import no family;
- only the binding (_lib.py, which loads the cffi module; ops.py, one checked
  wrapper per kernel; cuda.py, device memory) touches the C library.
The application layer (cli, hub, benchmarks) may import anything."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "mingpt_c"
FAMILIES = {"gpt", "encoder", "vit", "seq2seq"}
APPS = {"cli", "hub", "benchmarks"}
BINDING = {"_lib.py", "ops.py", "cuda.py", "_build.py"}


def modules():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def top(p: Path) -> str:
    """The first component under mingpt_c: a package name or a module's stem."""
    rel = p.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported(p: Path) -> set[str]:
    """Dotted names under mingpt_c that p imports (relative ones resolved)."""
    rel = p.relative_to(PKG).with_suffix("").parts
    out = set()
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name[len("mingpt_c."):] for a in node.names if a.name.startswith("mingpt_c.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel[:-1])[:len(rel) - node.level]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and (node.module == "mingpt_c" or node.module.startswith("mingpt_c.")):
                mod = node.module[len("mingpt_c."):] if node.module != "mingpt_c" else ""
            else:
                continue
            for a in node.names:   # the module, and each name as a possible submodule
                out |= {mod, f"{mod}.{a.name}"} if mod else {a.name}
    return out


def test_families_import_no_other_family():
    for p in modules():
        fam = top(p)
        if fam in FAMILIES:
            others = {m for m in imported(p) if m.split(".")[0] in FAMILIES - {fam}}
            assert not others, f"{p.relative_to(PKG)} (family {fam}) imports {sorted(others)}"


def test_shared_code_imports_no_family():
    for p in modules():
        if top(p) not in FAMILIES | APPS:
            fams = {m for m in imported(p) if m.split(".")[0] in FAMILIES}
            assert not fams, f"{p.relative_to(PKG)} (shared) imports {sorted(fams)}"


@pytest.mark.parametrize("p", modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_only_the_binding_touches_the_c_library(p):
    if p.name in BINDING and p.parent == PKG:
        return
    names = imported(p)
    assert not {"_lib.lib", "_lib.ffi", "_C"} & names, \
        f"{p.relative_to(PKG)} calls the C library directly: go through mingpt_c.ops"
