"""Data: downloads, BEIR-format conversion, pre-training corpora, text preparation, the demo world
(rules in workflow/rules/data.smk).
"""
