"""Retrieval: dense encoding, exact FAISS search, BM25 (workflow/rules/retrieval.smk)."""
