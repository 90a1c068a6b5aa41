"""The kernels' compiled code, written for Numba (the only package under kernels/ that imports it).

kernels/compiled.py runs these either through Numba's JIT or from the object code that
kernels/aot.py compiled ahead of time; ENTRIES lists the entry points and the argument types the
wrappers call them with.
"""
