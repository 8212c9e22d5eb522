"""Builds the one cffi extension module `mingpt_c._C` (API mode) from csrc/.

`make` runs this file; `pip install -e .` runs it through cffi's setuptools
hook (`cffi_modules` in pyproject.toml). The header csrc/mingpt.h is the cdef,
read as it is with preprocessor lines dropped.

Environment knobs (the Makefile sets them):
  MINGPT_BUILD=release|debug|sanitize   -O3 (default), -O0 -g, or ASan+UBSan
  MINGPT_PORTABLE=1                     no -march=native: the portable C path
  MINGPT_CUDA=1                         also compile csrc/cuda/*.cu with nvcc and link
                                        them (`make cuda`); otherwise every mg_cuda_*
                                        function is a stub returning MG_ERR_NO_CUDA
  NVCC, CUDA_HOME                       nvcc and the toolkit (default: nvcc on PATH)
  CC                                    the C compiler (default: cc)

`python mingpt_c/_build.py --cuda-objects` only compiles the .cu files (CI
does this on machines without a GPU, so a broken .cu never lands).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def cdef_text() -> str:
    lines = (CSRC / "mingpt.h").read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def _compiles(flags: list[str], code: str = "int main(void){return 0;}\n") -> bool:
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(code)
        r = subprocess.run([cc, *flags, str(src), "-o", str(Path(tmp) / "probe")],
                           capture_output=True)
        return r.returncode == 0


def compile_flags() -> tuple[list[str], list[str], dict[str, bool]]:
    mode = os.environ.get("MINGPT_BUILD", "release")
    # -fno-math-errno: nothing reads errno, and with it set gcc keeps every
    # sqrtf a scalar call (AdamW's update loop was not vectorised).
    cflags = ["-std=c11", "-fPIC", "-Wall", "-Wextra", "-Wno-unused-parameter",
              "-D_GNU_SOURCE", "-fno-math-errno"]
    ldflags: list[str] = []
    if mode == "debug":
        cflags += ["-O0", "-g"]
    elif mode == "sanitize":
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
               "-fno-omit-frame-pointer"]
        cflags += ["-O1", "-g", *san]
        ldflags += san
    else:
        cflags += ["-O3"]
    features = {"openmp": False, "native": False}
    omp_probe = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    if _compiles(["-fopenmp"], omp_probe):
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
        features["openmp"] = True
    if os.environ.get("MINGPT_PORTABLE") != "1" and _compiles(["-march=native"]):
        cflags.append("-march=native")
        features["native"] = True
    return cflags, ldflags, features


# ------------------------------------------------------------------ CUDA

# sm_80 (A100) and sm_90 (H100/H200) machine code, plus PTX that newer chips
# compile at load time.
CUDA_ARCHS = ["-gencode", "arch=compute_80,code=sm_80",
              "-gencode", "arch=compute_90,code=sm_90",
              "-gencode", "arch=compute_90,code=compute_90"]


def _cuda_declarations() -> list[str]:
    """Every `mg_status mg_cuda_...(...);` declaration of the header, whole."""
    text = re.sub(r"/\*.*?\*/", "", (CSRC / "mingpt.h").read_text(), flags=re.S)
    return re.findall(r"mg_status\s+mg_cuda_\w+\s*\([^;]*\)\s*;", text)


def cuda_stub_source() -> str:
    """A CPU build's CUDA entry points: each declaration of the header with a
    body that reports MG_ERR_NO_CUDA, so the one module always has the whole
    API and Python can say plainly that this build has no CUDA."""
    out = ['#include "common.h"']
    for decl in _cuda_declarations():
        name = re.search(r"(mg_cuda_\w+)", decl).group(1)
        out.append(decl.rstrip().rstrip(";") +
                   f' {{ return mg_fail(MG_ERR_NO_CUDA, "{name}", "this build has no CUDA '
                   f'path: rebuild with `make cuda` on a machine with nvcc"); }}')
    return "\n".join(out) + "\n"


def _site_nvidia_dirs() -> list[Path]:
    """The CUDA 13 wheels' folder (nvidia/cu13, from `pip install nvidia-cublas`)."""
    import importlib.util
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    return [Path(r) / "cu13" for r in roots if (Path(r) / "cu13").is_dir()]


def cuda_paths() -> dict:
    """nvcc, include and library folders, and the cuBLAS libraries to link:
    the toolkit's where it has cuBLAS, else PyPI's CUDA 13 wheels."""
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
    if not nvcc:
        raise SystemExit("make cuda: nvcc not found (set NVCC or put the CUDA toolkit on PATH)")
    # nvcc on PATH may be a wrapper script: prefer CUDA_HOME, then the usual place
    homes = [os.environ.get("CUDA_HOME"), "/usr/local/cuda", Path(nvcc).resolve().parent.parent]
    home = next((Path(h) for h in homes if h and (Path(h) / "include" / "cuda_runtime.h").exists()),
                Path(nvcc).resolve().parent.parent)
    lib_dir = home / "lib64" if (home / "lib64").is_dir() else home / "lib"
    inc, libs, lib_dirs = [home / "include"], [], [lib_dir]
    if (home / "include" / "cublas_v2.h").exists() and (lib_dir / "libcublas.so").exists():
        libs = ["-lcublas", "-lcublasLt"]
    else:
        for w in _site_nvidia_dirs():
            if (w / "include" / "cublas_v2.h").exists():
                inc.append(w / "include")
                wl = w / "lib"
                libs = [str(wl / "libcublas.so.13"), str(wl / "libcublasLt.so.13")]
                lib_dirs.append(wl)
                break
        else:
            raise SystemExit("make cuda: cuBLAS not found in the CUDA toolkit "
                             f"({home}) nor in an installed `nvidia-cublas` wheel: "
                             "pip install nvidia-cublas")
    return {"nvcc": nvcc, "include": inc, "lib_dirs": lib_dirs, "libs": libs}


def build_cuda_objects() -> list[str]:
    """Compiles csrc/cuda/*.cu into build/cuda/*.o (only those out of date)."""
    paths = cuda_paths()
    out_dir = ROOT / "build" / "cuda"
    out_dir.mkdir(parents=True, exist_ok=True)
    headers = [CSRC / "mingpt.h", CSRC / "common.h", *(CSRC / "cuda").glob("*.cuh")]
    newest_header = max(h.stat().st_mtime for h in headers)
    flags = ["-O3", "-std=c++17", "-lineinfo", "-Xcompiler", "-fPIC,-Wall,-Wextra,-Wno-unused-parameter",
             *CUDA_ARCHS, "-I", str(CSRC), *(f"-I{d}" for d in paths["include"])]
    from concurrent.futures import ThreadPoolExecutor

    todo, objs = [], []
    for cu in sorted((CSRC / "cuda").glob("*.cu")):
        obj = out_dir / (cu.stem + ".o")
        if not obj.exists() or obj.stat().st_mtime < max(cu.stat().st_mtime, newest_header):
            todo.append((cu, obj))
        objs.append(str(obj))

    def compile_one(job):
        cu, obj = job
        print(f"nvcc {cu.relative_to(ROOT)}", flush=True)
        return cu, subprocess.run([paths["nvcc"], *flags, "-c", str(cu), "-o", str(obj)]).returncode

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:   # nvcc is slow: in parallel
        failed = [cu for cu, rc in pool.map(compile_one, todo) if rc != 0]
    if failed:
        raise SystemExit("nvcc failed on " + ", ".join(str(f.relative_to(ROOT)) for f in failed))
    return objs


def make_ffi(absolute: bool = False) -> FFI:
    """setuptools wants source paths relative to the project; a direct
    compile in a temporary directory needs them absolute."""
    cflags, ldflags, features = compile_flags()
    sources = sorted(str(p if absolute else p.relative_to(ROOT)) for p in CSRC.glob("*.c"))
    preamble = '#include "mingpt.h"\n'
    extra_objects: list[str] = []
    libraries: list[str] = []
    library_dirs: list[str] = []
    features["cuda"] = os.environ.get("MINGPT_CUDA") == "1"
    if features["cuda"]:
        sources = [s for s in sources if not s.endswith("cuda_stubs.c")]
        extra_objects += build_cuda_objects()
        paths = cuda_paths()
        library_dirs += [str(d) for d in paths["lib_dirs"]]
        libraries += ["cudart", "stdc++"]
        ldflags += [*paths["libs"], *(f"-Wl,-rpath,{d}" for d in paths["lib_dirs"])]
    else:
        preamble += cuda_stub_source()
    ffi = FFI()
    ffi.cdef(cdef_text())
    ffi.set_source("mingpt_c._C", preamble,
                   sources=sources, include_dirs=[str(CSRC) if absolute else "csrc"],
                   extra_compile_args=cflags, extra_link_args=ldflags,
                   extra_objects=extra_objects, libraries=libraries,
                   library_dirs=library_dirs)
    ffi._mingpt_features = features  # reported by main()
    return ffi


ffibuilder = make_ffi()


def main() -> None:
    os.chdir(ROOT)
    if sys.argv[1:] == ["--cuda-objects"]:
        objs = build_cuda_objects()
        print(f"compiled {len(objs)} CUDA objects into build/cuda/")
        return
    ffi = make_ffi(absolute=True)
    features = ffi._mingpt_features
    for old in (ROOT / "mingpt_c").glob("_C.*.so"):
        old.unlink()  # a stale build under another ABI tag would shadow this one
    with tempfile.TemporaryDirectory() as tmp:
        lib = ffi.compile(tmpdir=tmp, verbose=False)
        dest = ROOT / "mingpt_c" / Path(lib).name
        shutil.copyfile(lib, dest)
    mode = os.environ.get("MINGPT_BUILD", "release")
    ok, no = "\u2713", "\u2717"
    print(f"built mingpt_c/{dest.name} ({mode})")
    print(f"  {ok if features['openmp'] else no} OpenMP"
          + ("" if features["openmp"] else
             "  -- NOT FOUND: the core runs on ONE thread (install libgomp / use gcc)"))
    print(f"  {ok if features['native'] else no} host vector instructions (-march=native)")
    print(f"  {ok if features['cuda'] else no} CUDA" + ("" if features["cuda"] else
                                                          "  (make cuda builds it)"))


if __name__ == "__main__":
    sys.exit(main())
