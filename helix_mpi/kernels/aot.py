"""Kernels compiled ahead of time, so that a rank runs them without importing Numba.

Why: with Numba's on-disk cache a process still pays `import numba` (~0.2 s of CPU) and loading
and type-checking each cached kernel (~0.2 s) before its first kernel call: at 72 ranks on a
2-core laptop that alone is ~10-20 s of the start-up (scripts/bench_scale.py).

How: one process (`build`), or ranks 0 and 1 of a run each compiling half (`compile_share`, rank
0 then `link_library`), compiles every entry point of jit/entries.py for each row of argument
types as a C-callable function (`numba.cfunc` over raw pointers and one array of shapes), links
them into one LLVM module and writes its native object code and a manifest into a folder keyed
by the kernels' sources, the host CPU and llvmlite's version. Any process on that machine then
loads the object with llvmlite's MCJIT (llvmlite.binding only: no Numba import) and calls the
functions through ctypes (`Library.entry`).

The object needs no Numba runtime: the kernels allocate nothing (their scratch comes from the
wrappers) and raise nothing on checked inputs. Numba's C wrappers still reference its exception
and allocation helpers on their error paths; where Numba has not bound them in this process they
are bound to a function that stops the process with one line (reaching one is a bug: rerun with
HELIX_MPI_KERNELS=jit to see Numba's own error).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

FORMAT = 1  # of the manifest
MANIFEST, OBJECT = "manifest.json", "kernels.o"
_RUNTIME_PREFIXES = ("NRT_", "numba_")  # Numba's runtime helpers
# The ones numba.cfunc's C wrappers reference to report a kernel's exception (and release its
# reference counts); a kernel needing any other (an allocation, numba's reshape) can not be built
ERROR_PATH_SYMBOLS = frozenset({"NRT_Free", "NRT_MemInfo_call_dtor", "numba_do_raise", "numba_gil_ensure",
                                "numba_gil_release", "numba_runtime_build_excinfo_struct", "numba_unpickle"})
_SCALAR_CTYPES = {"float32": ctypes.c_float, "float64": ctypes.c_double, "int32": ctypes.c_int32,
                  "int64": ctypes.c_int64, "uint32": ctypes.c_uint32, "uint64": ctypes.c_uint64}
_SCALAR_PYTHON = {"float32": float, "float64": float}  # everything else: int


def sources_fingerprint() -> str:
    """12 hex digits of a hash of every kernels/**/*.py source (sorted by path)."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for source in sorted(root.rglob("*.py")):
        digest.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:12]


def library_folder(cache_root: str | Path) -> Path:
    """The folder of this machine's library under `cache_root`: one per version of the kernels'
    sources, host CPU (and Numba's CPU overrides, if set) and llvmlite version."""
    import llvmlite
    import llvmlite.binding as llvm

    cpu = os.environ.get("NUMBA_CPU_NAME") or llvm.get_host_cpu_name()
    features = os.environ.get("NUMBA_CPU_FEATURES") or llvm.get_host_cpu_features().flatten()
    machine = hashlib.sha256(f"{cpu}|{features}|{llvmlite.__version__}".encode()).hexdigest()[:8]
    return Path(cache_root) / "aot" / f"{sources_fingerprint()}-{cpu}-{machine}"


# ------------------------------------------------------------------------------ building (Numba)
def build(folder: Path) -> Path:
    """Compile every entry variant and write `folder`/kernels.o and manifest.json (each under a
    temporary name, renamed when complete: concurrent builders leave one whole library)."""
    return link_library(folder, [compile_share(0, 1)])


def _variants() -> list[tuple[str, object, tuple]]:
    """(entry name, Numba kernel, argument types) of every variant, in manifest order."""
    from .jit.entries import ENTRIES

    return [(name, kernel, argtypes) for name, (kernel, variants) in ENTRIES.items() for argtypes in variants]


def compile_share(share: int, shares: int) -> dict:
    """Variants share, share + shares, ... (the two attention variants, ~7 s each, fall into two
    shares of 2) compiled into one LLVM module: {"bitcode": bytes, "rows": [[variant index, name,
    symbol, args]]}, a plain dict (sent between ranks as is)."""
    import llvmlite.binding as llvm

    modules, rows = [], []
    for index, (name, kernel, argtypes) in enumerate(_variants()):
        if index % shares != share:
            continue
        compiled = _c_entry(kernel, argtypes, f"{name}_variant_{index}")
        modules.append(llvm.parse_bitcode(compiled._library._final_module.as_bitcode()))
        rows.append([index, name, compiled.native_name, [_arg_spec(t) for t in argtypes]])
    return {"bitcode": _linked(modules).as_bitcode() if modules else b"", "rows": rows}


def _linked(modules: list):
    """The first LLVM module with every other linked into it."""
    for other in modules[1:]:
        modules[0].link_in(other)
    return modules[0]


def link_library(folder: Path, pieces: list[dict]) -> Path:
    """Link the modules of `pieces` (compile_share of every share), emit the object code and write
    the library into `folder`."""
    import llvmlite.binding as llvm
    from numba.core.registry import cpu_target

    rows = sorted(row for piece in pieces for row in piece["rows"])
    if [row[0] for row in rows] != list(range(len(_variants()))) or len({row[2] for row in rows}) != len(rows):
        raise RuntimeError("the shares compiled do not hold every kernel variant once, each its own symbol")
    module = _linked([llvm.parse_bitcode(piece["bitcode"]) for piece in pieces if piece["bitcode"]])
    manifest = {"format": FORMAT, "entries": {}, "processes": sum(1 for piece in pieces if piece["rows"])}
    for _, name, symbol, args in rows:
        manifest["entries"].setdefault(name, []).append({"symbol": symbol, "args": args})
    manifest["runtime_symbols"] = sorted(f.name for f in module.functions
                                         if f.is_declaration and f.name.startswith(_RUNTIME_PREFIXES))
    needed = set(manifest["runtime_symbols"]) - ERROR_PATH_SYMBOLS
    if needed:
        raise RuntimeError(f"the kernels call Numba's runtime ({', '.join(sorted(needed))}): a kernel allocates "
                           "or uses a Numba feature precompiled code can not carry")
    code = cpu_target.target_context.codegen()._tm.emit_object(module)
    manifest["object_sha256"] = hashlib.sha256(code).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(folder / OBJECT, code)
    _write_atomically(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    return folder


def _c_entry(kernel, argtypes, function_name: str):
    """numba.cfunc `function_name` calling `kernel`: each array argument as a typed pointer, then
    one int64 pointer to the arrays' shapes, concatenated in argument order. (Its symbol holds the
    name: variants compiled in different processes, compile_share, can not collide.)"""
    from numba import carray, cfunc, types

    params, unpack, call, offset = [], [], [], 0
    for i, argtype in enumerate(argtypes):
        params.append(f"a{i}")
        if isinstance(argtype, types.Array):
            dims = ", ".join(f"shapes[{offset + d}]" for d in range(argtype.ndim))
            unpack.append(f"    x{i} = carray(a{i}, ({dims},))")
            call.append(f"x{i}")
            offset += argtype.ndim
        else:
            call.append(f"a{i}")
    source = (f"def {function_name}({', '.join(params)}, shapes):\n" + "\n".join(unpack)
              + f"\n    kernel({', '.join(call)})\n")
    namespace = {"carray": carray, "kernel": kernel}
    exec(compile(source, f"<helix_mpi.kernels.aot entry of {kernel.__name__}>", "exec"), namespace)
    pointer_types = [types.CPointer(t.dtype) if isinstance(t, types.Array) else t for t in argtypes]
    return cfunc(types.void(*pointer_types, types.CPointer(types.int64)))(namespace[function_name])


def _arg_spec(argtype) -> list:
    """[dtype name, ndim] of an argument type (ndim 0: a scalar passed by value)."""
    from numba import types

    if isinstance(argtype, types.Array):
        return [str(np.dtype(argtype.dtype.name)), argtype.ndim]
    return [str(np.dtype(argtype.name)), 0]


def _write_atomically(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", delete=False) as part:
        part.write(data)
    os.replace(part.name, path)


# ------------------------------------------------------------------------ loading (no Numba)
class Library:
    """The precompiled kernels of `folder`, loaded into this process: `entry(name)` is a callable
    taking the same arguments as the Numba kernel (C-contiguous arrays, scalars)."""

    def __init__(self, folder: Path):
        manifest, code = _read(folder)
        self.folder = folder
        self._engine = _load_object(code, manifest["runtime_symbols"])
        self._entries = {name: _Entry(name, [(self._function(v), v["args"]) for v in variants])
                         for name, variants in manifest["entries"].items()}

    def entry(self, name: str) -> _Entry:
        return self._entries[name]

    def _function(self, variant: dict):
        address = self._engine.get_function_address(variant["symbol"])
        if not address:
            raise OSError(f"{self.folder}: {variant['symbol']} missing from the object")
        argtypes = [ctypes.c_void_p if ndim else _SCALAR_CTYPES[dtype] for dtype, ndim in variant["args"]]
        return ctypes.CFUNCTYPE(None, *argtypes, ctypes.c_void_p)(address)


class _Entry:
    """One entry point: picks the variant compiled for the dtypes of the arrays it is given
    (dtype characters: `str(dtype)` alone would cost ~2 us per array per call)."""

    def __init__(self, name: str, variants: list):
        self.name, self._jit = name, None
        self._by_dtypes = {}
        for function, args in variants:
            arrays = tuple(np.dtype(dtype).char for dtype, ndim in args if ndim)
            scalars = [None if ndim else _SCALAR_PYTHON.get(dtype, int) for dtype, ndim in args]
            self._by_dtypes[arrays] = (function, [ndim for _, ndim in args], scalars)

    def __call__(self, *values) -> None:
        found = self._by_dtypes.get(tuple(v.dtype.char for v in values if isinstance(v, np.ndarray)))
        if found is None:  # not precompiled: Numba's JIT (imported now)
            return self._jit_kernel()(*values)
        function, ndims, scalars = found
        converted, shapes = [], []
        for value, ndim, scalar in zip(values, ndims, scalars, strict=True):
            if scalar is not None:
                converted.append(scalar(value))
            elif value.ndim != ndim or not value.flags.c_contiguous:
                raise TypeError(f"{self.name}: expected a C-contiguous {ndim}-d array, got {value.ndim}-d")
            else:
                converted.append(value.ctypes.data)
                shapes += value.shape
        dims = np.array(shapes, np.int64)  # held until the call returns
        function(*converted, dims.ctypes.data)

    def _jit_kernel(self):
        if self._jit is None:
            from .jit.entries import ENTRIES

            self._jit = ENTRIES[self.name][0]
        return self._jit


def _read(folder: Path) -> tuple[dict, bytes]:
    """(manifest, object code) of a complete library; OSError if missing, partial or stale."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        code = (folder / OBJECT).read_bytes()
        complete = manifest["format"] == FORMAT and hashlib.sha256(code).hexdigest() == manifest["object_sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise OSError(f"{folder}: not a kernel library ({exc})") from None
    if not complete:
        raise OSError(f"{folder}: not a complete kernel library")
    return manifest, code


_ENGINES: list = []  # loaded code must outlive every ctypes function pointing into it
_FATAL: list = []  # the one ctypes callback the runtime symbols are bound to


def _load_object(code: bytes, runtime_symbols: list[str]):
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    for name in runtime_symbols:
        if not llvm.address_of_symbol(name):  # Numba bound its own helper already: keep it
            llvm.add_symbol(name, _fatal_address())
    machine = llvm.Target.from_default_triple().create_target_machine()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine)
    engine.add_object_file(llvm.ObjectFileRef.from_data(code))
    engine.finalize_object()
    _ENGINES.append(engine)
    return engine


def _fatal_address() -> int:
    if not _FATAL:
        _FATAL.append(ctypes.CFUNCTYPE(None)(_runtime_reached))
    return ctypes.cast(_FATAL[0], ctypes.c_void_p).value


def _runtime_reached() -> None:
    sys.stderr.write("helix-mpi: error: a precompiled kernel reached Numba's runtime (a kernel bug); "
                     "rerun with HELIX_MPI_KERNELS=jit to see Numba's own error\n")
    sys.stderr.flush()
    os._exit(70)
