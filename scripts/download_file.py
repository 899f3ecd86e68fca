"""Download one file, md5-verified, resumable, through the mirror when set (rule download_beir)."""

import argparse
import logging

from contriever_repro.cli import run_main
from contriever_repro.download import download

log = logging.getLogger("download")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--md5", default="", help="expected md5 (empty: not verified)")
    ap.add_argument("--mirror", default=None, help="local folder or URL base")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    download(args.url, args.out, md5=args.md5 or None, mirror=args.mirror, log=log.info)


if __name__ == "__main__":
    run_main(main)
