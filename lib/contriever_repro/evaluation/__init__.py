"""Evaluation: metrics exactly as beir computes them, in-process scoring
(workflow/rules/evaluation.smk).
"""
