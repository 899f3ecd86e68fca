"""Unpack a BEIR zip so that the output folder is the data set folder itself (rule unpack_beir)."""

import argparse

from contriever_repro.cli import run_main
from contriever_repro.data.download import extract_zip, zip_root


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zip", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    extract_zip(args.zip, args.out, member_prefix=zip_root(args.zip))


if __name__ == "__main__":
    run_main(main)
