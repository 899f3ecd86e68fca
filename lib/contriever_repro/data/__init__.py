"""Data: downloads, BEIR-format conversion, pre-training corpora, text preparation, open-domain
QA questions and DPR passages, MKQA, the demo world (rules in workflow/rules/data.smk).
"""
