"""Evaluation: audio embedders, the metrics with their confidence intervals, the backbone's quality and the
report of notebook 06.
"""
