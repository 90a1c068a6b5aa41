"""The precompiled kernel library (kernels/aot.py) against Numba's JIT, and how processes load it.

The JIT kernels are checked against float64 references by test_kernels*.py; here every entry of
the library must give what the JIT gives on the same inputs. Tolerances: bit operations (bf16
conversions, the counter-based fills) and the GEMM (explicit FMA intrinsics in a fixed order) must
be identical; attention may differ in the last bit of float32 (the same source compiled into a C
wrapper lets LLVM contract or reorder a few operations differently: measured at most 6e-8), so
it is held to rtol 2e-6, atol 1e-6, far below any difference a kernel bug would make.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helix_mpi import synth
from helix_mpi.kernels import compiled, from_bf16, linear, partial_attention, to_bf16
from helix_mpi.kernels import aot


@pytest.fixture(scope="module")
def both():
    """fn -> (fn() under Numba's JIT, fn() under the precompiled library), built once if missing."""
    def run(fn):
        previous = compiled.use("jit")
        try:
            jit = fn()
            compiled.use("aot")
            return jit, fn()
        finally:
            compiled.use(previous or "jit")
    return run


def _rand(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("storage", ["fp32", "bf16"])
@pytest.mark.parametrize("G,D", [(1, 128), (2, 64), (3, 64), (4, 128), (8, 128), (16, 576)])
def test_attention_matches_the_jit(both, G, D, storage):
    B, Kh, C = 3, 2, 300
    q = _rand(B, Kh * G, D)
    k, v = _rand(B, Kh, C, D, seed=1), _rand(B, Kh, C, D, seed=2)
    if storage == "bf16":
        k, v = to_bf16(k), to_bf16(v)
    lengths = np.array([300, 129, 0])  # a full cache, a partial last tile, an empty shard
    (out_jit, lse_jit), (out_aot, lse_aot) = both(lambda: partial_attention(q, k, v, lengths))
    np.testing.assert_allclose(out_aot, out_jit, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(lse_aot, lse_jit, rtol=2e-6, atol=1e-6)
    assert np.isneginf(lse_aot[2]).all() and not out_aot[2].any()


def test_a_variant_not_precompiled_runs_through_the_jit(both):
    """A float32 K cache with a bf16 V cache has no precompiled variant: Numba's JIT runs it."""
    q, k, v = _rand(1, 4, 64), _rand(1, 2, 50, 64, seed=1), to_bf16(_rand(1, 2, 50, 64, seed=2))
    jit, precompiled = both(lambda: partial_attention(q, k, v, np.array([50])))
    np.testing.assert_array_equal(precompiled[0], jit[0])


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 13, 16])
def test_linear_is_identical(both, rows, bf16):
    x, w = _rand(rows, 83), _rand(83, 301, seed=3)
    if bf16:
        w = to_bf16(w)
    jit, precompiled = both(lambda: linear(x, w))
    np.testing.assert_array_equal(precompiled, jit)


def test_bf16_conversions_are_identical(both):
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0 + 2.0 ** -8, 3.4e38, 1e-40], np.float32)
    a = np.concatenate([specials, _rand(1001)])
    (bits_jit, back_jit), (bits_aot, back_aot) = both(lambda: (to_bf16(a), from_bf16(to_bf16(a))))
    np.testing.assert_array_equal(bits_aot, bits_jit)
    np.testing.assert_array_equal(back_aot.view(np.uint32), back_jit.view(np.uint32))


@pytest.mark.parametrize("bf16", [False, True])
def test_synthetic_tensors_are_identical(both, bf16):
    jit, precompiled = both(lambda: synth.matrix_block(7, "w", (200, 90), (3, 170), (1, 89), 0.1, 0.5, bf16))
    np.testing.assert_array_equal(precompiled, jit)


def _in_a_fresh_process(code: str, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_a_process_with_the_library_never_imports_numba(both):
    """Every entry, on shapes that take each code path (heads in lanes or not, a partial tile,
    bf16 and fp32, 1 to 16 rows of x), in a process that loads the library and has no Numba."""
    both(lambda: None)  # the library exists
    code = ("import sys, numpy as np\n"
            "from helix_mpi.kernels import compiled, partial_attention, linear, to_bf16, from_bf16\n"
            "from helix_mpi import synth\n"
            "for bf16 in (False, True):\n"
            "    w = synth.matrix_block(1, 'w', (64, 70), (0, 64), (3, 70), bf16=bf16)\n"
            "    for rows in (2, 7, 16):\n"
            "        linear(np.ones((rows, 64), np.float32), w)\n"
            "    for G, D in ((1, 128), (2, 4), (3, 64), (8, 64), (16, 576)):\n"
            "        q = np.ones((2, 2 * G, D), np.float32); kv = np.ones((2, 2, 130, D), np.float32)\n"
            "        kv = to_bf16(kv) if bf16 else kv\n"
            "        partial_attention(q, kv, kv, np.array([130, 0]))\n"
            "from_bf16(to_bf16(np.ones(5)))\n"
            "print(compiled.backend().name, 'numba' in sys.modules)\n")
    done = _in_a_fresh_process(code, HELIX_MPI_KERNELS="auto")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["aot", "False"]
    done = _in_a_fresh_process(code, HELIX_MPI_KERNELS="jit")
    assert done.stdout.split() == ["jit", "True"]


def test_the_library_needs_numbas_runtime_only_to_report_errors(both):
    """Helpers of Numba's runtime bound to the one-line stop must only sit on error paths
    (a kernel that allocates, or calls Numba's reshape, is refused at build time)."""
    both(lambda: None)
    manifest = json.loads((aot.library_folder(compiled.cache_root()) / aot.MANIFEST).read_text())
    assert manifest["runtime_symbols"] and set(manifest["runtime_symbols"]) <= aot.ERROR_PATH_SYMBOLS


def test_a_kernel_error_stops_the_process_with_one_line(both):
    """A kernel that raises inside the library (here: a zero divisor the wrapper would refuse)
    reaches Numba's runtime, which a process without Numba does not have: one line, exit 70."""
    both(lambda: None)
    code = ("import numpy as np\n"
            "from helix_mpi.kernels import compiled\n"
            "from helix_mpi.kernels.tiling import attention_work_floats\n"
            "f32 = np.float32\n"
            "q, kv = np.ones((1, 4, 16), f32), np.ones((1, 0, 4, 16), f32)\n"
            "compiled.kernel('attention')(q, kv, kv, np.ones(1, np.int64), f32(1), np.empty((1, 4, 16), f32),\n"
            "    np.empty((1, 4), f32), np.empty(attention_work_floats(4, 16), f32))\n")
    done = _in_a_fresh_process(code, HELIX_MPI_KERNELS="auto")
    assert done.returncode == 70, (done.returncode, done.stderr)
    assert done.stderr.strip().splitlines() == [
        "helix-mpi: error: a precompiled kernel reached Numba's runtime (a kernel bug); rerun with "
        "HELIX_MPI_KERNELS=jit to see Numba's own error"]


def test_an_incomplete_library_is_not_loaded(both, tmp_path):
    both(lambda: None)
    folder = tmp_path / "library"
    shutil.copytree(aot.library_folder(compiled.cache_root()), folder)
    aot.Library(folder)  # a complete copy loads
    code = bytearray((folder / aot.OBJECT).read_bytes())
    code[len(code) // 2] ^= 0xFF
    (folder / aot.OBJECT).write_bytes(bytes(code))
    with pytest.raises(OSError, match="not a complete kernel library"):
        aot.Library(folder)
    (folder / aot.MANIFEST).write_text("{")
    with pytest.raises(OSError, match="not a kernel library"):
        aot.Library(folder)


def test_the_library_folder_follows_the_cpu(monkeypatch, tmp_path):
    """A library is machine code for one CPU: a cluster's other node types get their own."""
    here = aot.library_folder(tmp_path)
    monkeypatch.setenv("NUMBA_CPU_NAME", "generic")
    assert aot.library_folder(tmp_path) != here
    assert aot.library_folder(tmp_path).parent == tmp_path / "aot"


def test_a_bad_backend_name_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(compiled.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match="HELIX_MPI_KERNELS='fast': use one of auto, aot, jit"):
        compiled.mode()


def test_run_refuses_a_bad_backend_name_in_one_line():
    from conftest import run_cli

    done = run_cli(["run", "-n", "2", "--steps", "1"], env={"HELIX_MPI_KERNELS": "fast"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "helix-mpi: error: HELIX_MPI_KERNELS='fast': use one of auto, aot, jit (or unset it)"]


def test_two_ranks_build_the_library_together(tmp_path):
    """A run on a machine without the library: ranks 0 and 1 compile half the variants each
    (emulator._build_library). The library holds every variant of jit/entries.py, each under its
    own symbol, and computes what the JIT computes (same tolerances as above)."""
    from conftest import run_cli
    from helix_mpi.kernels.jit.entries import ENTRIES

    cache = tmp_path / "cache"
    done = run_cli(["run", "-n", "2", "--steps", "1", "-o", str(tmp_path / "t.h5"), "-q"],
                   env={"NUMBA_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stderr
    assert "reference check" in done.stdout and "OK" in done.stdout
    assert "warning" not in done.stderr
    together = json.loads((aot.library_folder(cache) / aot.MANIFEST).read_text())
    assert {name: [v["args"] for v in variants] for name, variants in together["entries"].items()} == \
        {name: [[aot._arg_spec(t) for t in argtypes] for argtypes in variants]
         for name, (_, variants) in ENTRIES.items()}
    assert together["processes"] == 2
    symbols = [v["symbol"] for variants in together["entries"].values() for v in variants]
    assert len(set(symbols)) == len(symbols)
    code = ("import sys, numpy as np\n"
            "from helix_mpi.kernels import compiled, partial_attention, linear, to_bf16\n"
            "rng = np.random.default_rng(3)\n"
            "q = rng.standard_normal((2, 8, 128)).astype(np.float32)\n"
            "kv = rng.standard_normal((2, 2, 300, 128)).astype(np.float32)\n"
            "x, w = rng.standard_normal((5, 64)).astype(np.float32), rng.standard_normal((64, 48)).astype(np.float32)\n"
            "outs = [partial_attention(q, c, c, np.array([300, 17]))[0] for c in (kv, to_bf16(kv))]\n"
            "outs += [linear(x, c) for c in (w, to_bf16(w))]\n"
            "np.savez(sys.argv[1], *outs)\n"
            "print(compiled.backend().name)\n")
    results = {}
    for backend in ("aot", "jit"):
        done = _in_a_fresh_process(code, str(tmp_path / f"{backend}.npz"), HELIX_MPI_KERNELS=backend,
                                   NUMBA_CACHE_DIR=str(cache))
        assert done.returncode == 0 and done.stdout.split() == [backend], done.stderr
        results[backend] = np.load(tmp_path / f"{backend}.npz")
    for name in results["jit"].files:
        np.testing.assert_allclose(results["aot"][name], results["jit"][name], rtol=2e-6, atol=1e-6)
