"""Models: the model spec (pooling, normalisation, lengths) and the tiny BERT
(workflow/rules/models.smk).
"""
