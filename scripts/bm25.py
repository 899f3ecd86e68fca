"""BM25 run over one evaluation unit with bm25s (rule bm25)."""

import argparse
import json

from contriever_repro.cli import run_main, set_threads
from contriever_repro.io import read_table
from contriever_repro.retrieval import bm25
from contriever_repro.retrieval.search import add_run_args, write_run


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True, help="config.models entry of type bm25 (JSON)")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--queries", required=True)
    add_run_args(ap)
    args = ap.parse_args()
    set_threads(args.threads)

    spec = json.loads(args.spec)
    run = bm25.bm25_search(
        read_table(args.corpus, "corpus"),
        read_table(args.queries, "queries"),
        top_k=args.top_k,
        k1=spec.get("k1", bm25.DEFAULT_K1),
        b=spec.get("b", bm25.DEFAULT_B),
        method=spec.get("method", bm25.DEFAULT_METHOD),
        stemmer_language=spec.get("stemmer", bm25.DEFAULT_STEMMER),
        stopwords=spec.get("stopwords", bm25.DEFAULT_STOPWORDS),
        drop_identical_ids=args.drop,
    )
    write_run(run, args.run, args.trec, args.tag)


if __name__ == "__main__":
    run_main(main)
