"""Compile the SparseFullyConnected extension against the installed OpenVINO, once.

The library is keyed by its sources, the OpenVINO version and the compiler, and kept in
`cache_dir()/extensions/`; a build goes to a temporary file first and is renamed into place, so a killed build
leaves nothing half-written. It needs a C++17 compiler (`$CXX`, else g++) and the headers the `openvino` wheel
ships; no other toolchain.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from sqft_ov.errors import SqftError
from sqft_ov.io.cache import cache_dir

HERE = Path(__file__).resolve().parent
SOURCES = ("sparse_fc.cpp", "bitmask_gemv.hpp")
LIBRARY = "libsqft_sparse_fc.so"


def _openvino_root() -> Path:
    import openvino

    return Path(openvino.__file__).resolve().parent


def _link_name(libs: Path, stem: str) -> str:
    """The wheel ships versioned libraries only (libopenvino.so.2641): link the file by its name."""
    found = sorted(p.name for p in libs.glob(f"{stem}.so*"))
    if not found:
        raise SqftError(f"the openvino wheel has no {stem}.so* under {libs}: cannot build the sparse extension")
    return f"-l:{found[0]}"


@functools.cache
def _key(compiler: str) -> str:
    """Sources, OpenVINO version and compiler, read once per process (one library per process)."""
    import openvino

    digest = hashlib.sha256(f"{openvino.get_version()}|{compiler}".encode())
    for name in SOURCES:
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()[:16]


def extension_library(rebuild: bool = False) -> Path:
    """The path of the built extension library (built now if this source / OpenVINO pair has none)."""
    compiler = os.environ.get("CXX") or "g++"
    target = cache_dir() / "extensions" / _key(compiler) / LIBRARY
    if target.exists() and not rebuild:
        return target
    if shutil.which(compiler) is None:
        raise SqftError(f"building the sparse extension needs a C++ compiler: {compiler!r} is not on PATH "
                        "(install g++ or set CXX)")
    root = _openvino_root()
    libs = root / "libs"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so.partial", delete=False) as tmp:
        partial = Path(tmp.name)
    command = [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-Wno-psabi", "-DOV_THREAD=OV_THREAD_TBB",
               f"-I{root / 'include'}", str(HERE / "sparse_fc.cpp"), f"-L{libs}", _link_name(libs, "libopenvino"),
               _link_name(libs, "libtbb"), f"-Wl,-rpath,{libs}", "-o", str(partial)]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SqftError(f"building the sparse extension failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
