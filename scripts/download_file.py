"""Download one file, md5-verified, resumable, through the mirror when set (rules
download_beir, download_corpus). The md5 is given, or looked up in a published checksum
listing (`--checksums-url`), or, with neither, computed and recorded next to the file."""

import argparse
import logging
from pathlib import Path

from contriever_repro.cli import run_main
from contriever_repro.download import download, md5_from_listing, md5sum
from contriever_repro.io import write_text

log = logging.getLogger("download")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--md5", default="", help="expected md5 (empty: not verified)")
    ap.add_argument("--checksums-url", default="", help="md5sum-style listing to take it from")
    ap.add_argument("--mirror", default=None, help="local folder or URL base")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    md5 = args.md5 or None
    if not md5 and args.checksums_url:
        listing = Path(args.out + ".checksums")
        download(args.checksums_url, listing, md5=None, mirror=args.mirror, log=log.info)
        md5 = md5_from_listing(
            listing.read_text(encoding="utf-8"), Path(args.url).name, args.checksums_url
        )
    if not md5:
        log.warning("no md5 pinned for %s: recording the md5 of what was downloaded", args.url)
    download(args.url, args.out, md5=md5, mirror=args.mirror, log=log.info)
    write_text(f"{md5 or md5sum(args.out)}  {Path(args.url).name}\n", args.out + ".md5")


if __name__ == "__main__":
    run_main(main)
