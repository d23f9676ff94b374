"""Benchmarks of the course's recipes, measured side by side in one run (`make bench`, see bench/run.py).

harness.py: interleaved rounds of timings, adaptive until each ratio's interval is tight or a time cap passes; medians
with bootstrap intervals and verdicts; a line fit; FLOP counts; the machine; the results file. padding.py: the batch
orders compared and their padding waste. report.py: the README's Performance block, generated from RESULTS.md.
gpu.py: the real-shape recipes on a CUDA GPU.
"""
