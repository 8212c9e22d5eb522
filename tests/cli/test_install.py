"""A non-editable `pip install .` into a fresh virtualenv, used from outside
the source tree: every subpackage and the C module come from the install,
nothing named `cli` lands in site-packages, and the console script `mingpt`
runs `env` and a short `train`.

The virtualenv sees this interpreter's packages (--system-site-packages), so
the dependencies are not installed again, and pip builds without isolation
and without an index: offline, in about 15-30 s (the C core compiles once
more, in pip's build of a copy of the tree). It skips, saying what is
missing, where no virtualenv, no pip or no build requirement is at hand.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.util import find_spec
from pathlib import Path

import pytest

from test_cli import TINY

ROOT = Path(__file__).resolve().parents[2]
PKG = "mingpt_c"

# The copy pip builds from leaves out what is not the product's source (VCS,
# build outputs, caches, the tests), so the build starts from nothing.
SKIP_IN_COPY = shutil.ignore_patterns(".git", "build", "dist", "tests", "__pycache__", "*.so", "*.o",
                                      "*.egg-info", "_C.c", ".venv", "runs", "out", ".pytest_cache",
                                      ".ruff_cache", ".hypothesis", ".benchmarks")


def subpackages() -> list[str]:
    """mingpt_c and every package under it, as the source tree has them."""
    return sorted(".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / PKG).rglob("__init__.py")
                  if "__pycache__" not in p.parts)


def missing_build_requirements() -> list[str]:
    """What `pip install --no-build-isolation` needs from this interpreter:
    setuptools, cffi, and bdist_wheel (the wheel package, or setuptools >= 70.1)."""
    missing = [m for m in ("setuptools", "cffi", "pip") if find_spec(m) is None]
    if "setuptools" not in missing and find_spec("wheel") is None:
        import setuptools

        if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (70, 1):
            missing.append("wheel")
    if "pip" not in missing:
        import pip

        if tuple(int(x) for x in pip.__version__.split(".")[:2]) < (22, 3):
            missing.append("pip>=22.3 (pip --python)")
    return missing


def run(cmd, cwd, env, timeout=120):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtualenv with mingpt-c installed (not editable); returns its
    bin folder, a working directory outside the source tree, and the environment."""
    missing = missing_build_requirements()
    if missing:
        pytest.skip(f"an offline `pip install --no-build-isolation .` needs {', '.join(missing)} "
                    f"in this Python (pip install -e '.[test]' brings them)")
    tmp = tmp_path_factory.mktemp("install")
    venv = tmp / "venv"
    # No pip inside (ensurepip costs seconds): this interpreter's pip installs
    # into it with --python.
    r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot create a virtualenv here: {r.stderr.strip()[-300:]}")
    bin_dir = venv / "bin"
    python = bin_dir / "python"
    if sys.prefix != sys.base_prefix:
        # Run from a virtualenv itself: --system-site-packages reaches the base
        # interpreter's packages, not this one's; add this one's to the new one.
        site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        tmp, None).strip())
        paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        (site / "outer-site-packages.pth").write_text("\n".join(sorted(paths)) + "\n")

    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP_IN_COPY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", src], tmp, env, timeout=600)
    work = tmp / "work"   # outside the source tree and outside the copy
    work.mkdir()
    return bin_dir, work, env


def test_installed_package_has_every_subpackage_and_the_c_module(installed):
    bin_dir, work, env = installed
    probe = (
        "import importlib, json, sys, sysconfig\n"
        "from importlib.util import find_spec\n"
        f"names = {subpackages() + [PKG + '._C']!r}\n"
        "files = {n: importlib.import_module(n).__file__ for n in names}\n"
        "print(json.dumps({'files': files, 'site': sysconfig.get_paths()['purelib'],\n"
        "                  'platsite': sysconfig.get_paths()['platlib'],\n"
        "                  'cli': find_spec('cli') is not None}))\n")
    got = json.loads(run([bin_dir / "python", "-c", probe], work, env))
    sites = {Path(got["site"]).resolve(), Path(got["platsite"]).resolve()}
    for name, file in got["files"].items():   # from the virtualenv, not the tree
        assert any(Path(file).resolve().is_relative_to(s) for s in sites), \
            f"{name} imported from {file}, not from the virtualenv's site-packages"
    assert not got["cli"], "a top-level module named `cli` is importable from the virtualenv"
    for site in sites:
        assert not (site / "cli.py").exists() and not (site / "cli").exists()


def test_console_script_runs_env_and_a_short_train(installed):
    bin_dir, work, env = installed
    out = run([bin_dir / "mingpt", "env"], work, env)
    assert out.startswith("mingpt-c ") and "openmp" in out and "vector path" in out
    # No FILE: the embedded default corpus, so the installed package alone
    # (no data from the source tree) is enough.
    out = run([bin_dir / "mingpt", "train", "--out", "run", "--max-iters", "3", *TINY], work, env)
    assert "done: 3 iterations" in out
    assert (work / "run" / "latest" / "model.safetensors").exists()
