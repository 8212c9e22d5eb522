"""Builds the one cffi extension module `mingpt_c._C` (API mode) from csrc/.

`make` runs this file; `pip install -e .` runs it through cffi's setuptools
hook (`cffi_modules` in pyproject.toml). The header csrc/mingpt.h is the cdef,
read as it is with preprocessor lines dropped.

Environment knobs (the Makefile sets them):
  MINGPT_BUILD=release|debug|sanitize   -O3 (default), -O0 -g, or ASan+UBSan
  MINGPT_PORTABLE=1                     no -march=native: the portable C path
  MINGPT_CUDA=1                         link csrc/cuda objects built by `make cuda`
  CC                                    the C compiler (default: cc)
"""
from __future__ import annotations

import os
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


def make_ffi(absolute: bool = False) -> FFI:
    """setuptools wants source paths relative to the project; a direct
    compile in a temporary directory needs them absolute."""
    cflags, ldflags, features = compile_flags()
    sources = sorted(str(p if absolute else p.relative_to(ROOT)) for p in CSRC.glob("*.c"))
    extra_objects: list[str] = []
    libraries: list[str] = []
    library_dirs: list[str] = []
    if os.environ.get("MINGPT_CUDA") == "1":
        cuda_objs = sorted(str(p) for p in (ROOT / "build" / "cuda").glob("*.o"))
        sources = [s for s in sources if not s.endswith("cuda_stubs.c")]
        extra_objects += cuda_objs
        cuda_home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
        library_dirs += [str(cuda_home / "lib64")]
        libraries += ["cudart", "cublas", "cublasLt", "stdc++"]
    ffi = FFI()
    ffi.cdef(cdef_text())
    ffi.set_source("mingpt_c._C", '#include "mingpt.h"\n',
                   sources=sources, include_dirs=[str(CSRC) if absolute else "csrc"],
                   extra_compile_args=cflags, extra_link_args=ldflags,
                   extra_objects=extra_objects, libraries=libraries,
                   library_dirs=library_dirs)
    ffi._mingpt_features = features  # reported by main()
    return ffi


ffibuilder = make_ffi()


def main() -> None:
    os.chdir(ROOT)
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
    print(f"  {ok if os.environ.get('MINGPT_CUDA') == '1' else no} CUDA")


if __name__ == "__main__":
    sys.exit(main())
