"""BM25 run over one evaluation unit with bm25s (rule bm25)."""

import argparse
import json
import logging

from contriever_repro import bm25
from contriever_repro.cli import run_main, set_threads
from contriever_repro.io import read_table, write_table
from contriever_repro.search import write_trec

log = logging.getLogger("bm25")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True, help="config.models entry of type bm25 (JSON)")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--top-k", type=int, default=1000)
    ap.add_argument("--drop-identical-ids", dest="drop", action="store_true", default=True)
    ap.add_argument("--keep-identical-ids", dest="drop", action="store_false")
    ap.add_argument("--tag", default="bm25")
    ap.add_argument("--run", required=True)
    ap.add_argument("--trec", required=True)
    ap.add_argument("--threads", type=int, default=None)
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
    log.info("run: %d queries, %d hits", run["query_id"].nunique(), len(run))
    write_table(run, args.run, "run")
    write_trec(run, args.trec, args.tag)


if __name__ == "__main__":
    run_main(main)
