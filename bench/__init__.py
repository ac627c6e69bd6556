"""pgtide benchmarks: `python -m bench [--quick]`.

Each benchmark measures pgtide and a baseline side by side in the same run
(this machine is shared and noisy: ratios and medians, never one absolute
time), prints a table and adds it to bench/results.json and docs/benchmarks.md.
Load generators and subscribers always run in processes of their own, apart
from the server they load. See docs/benchmarks.md for the method.
"""
