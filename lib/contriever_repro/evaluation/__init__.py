"""Evaluation: metrics exactly as beir computes them, DPR answer matching for open-domain QA,
in-process scoring (workflow/rules/evaluation.smk).
"""
