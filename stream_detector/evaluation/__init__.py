"""Evaluation helpers: event-level metrics, ROC-AUC, NAB scoring."""
