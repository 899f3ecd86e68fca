"""Models: the model spec (pooling, normalisation, lengths, device), hub sources and their
prefetch, the tiny BERT, the sentence-transformers export and model card
(workflow/rules/models.smk).
"""
