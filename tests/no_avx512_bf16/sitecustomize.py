"""Put this folder on PYTHONPATH and bitsandbytes behaves as on a CPU without AVX512-BF16, whatever the CPU has.

bitsandbytes asks `bitsandbytes.functional.has_avx512bf16()` when it registers its CPU kernels and when it builds
each `Linear4bit`; this replaces that function with one that answers False as soon as the module has loaded, before
anything else of bitsandbytes imports it. For tests only (tests/test_bnb_cpu.py).
"""

import importlib.abc
import importlib.machinery
import sys


class _AnswerNoAvx512Bf16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.has_avx512bf16 = lambda: False

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AnswerNoAvx512Bf16())
