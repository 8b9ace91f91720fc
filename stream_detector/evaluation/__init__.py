"""Evaluation: event-level metrics, ROC-AUC, NAB scoring, and the benchmark harness.

``events`` (incidents, event-level P/R, ROC-AUC, precision@n), ``nab`` (NAB's scorer),
``loaders`` (NAB, ODDS and SMAP/MSL as datasets), ``harness`` (the benchmarks behind
``scripts/evaluate.py``).
"""
