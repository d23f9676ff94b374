"""Benchmarks of the course's recipes, measured side by side in one run (`make bench`, see bench/run.py).

harness.py: timing (warm-up, interleaved repeats, median), FLOP counts, the machine, the results table;
sampler.py: length-grouped batching and padding waste; gpu.py: the real-shape recipes on a CUDA GPU.
"""
