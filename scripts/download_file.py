"""Download one file, md5-verified, resumable, through the mirror when set (rules
download_beir, download_corpus). The md5 is given, or looked up in a published checksum
listing (`--checksums-url`), or, with neither, computed and recorded next to the file."""

import argparse
import logging
import tempfile
from pathlib import Path

from contriever_repro.cli import run_main
from contriever_repro.data.download import download, md5_from_listing, md5sum
from contriever_repro.io import write_text

log = logging.getLogger("download")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--md5", default="", help="expected md5 (empty: not verified)")
    ap.add_argument("--checksums-url", default="", help="md5sum-style listing to take it from")
    ap.add_argument("--mirror", default="", help="local folder or URL base (empty: none)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    md5 = args.md5 or None
    mirror = args.mirror or None
    if not md5 and args.checksums_url:
        # Fetched afresh each time into a temporary folder: a listing kept from an
        # earlier run (another dump date, another mirror) must never decide the md5.
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=Path(args.out).parent) as tmp:
            listing = download(
                args.checksums_url, Path(tmp) / "checksums", md5=None, mirror=mirror, log=log.info
            )
            text = listing.read_text(encoding="utf-8")
        md5 = md5_from_listing(text, Path(args.url).name, args.checksums_url)
    if not md5:
        log.warning("no md5 pinned for %s: recording the md5 of what was downloaded", args.url)
    download(args.url, args.out, md5=md5, mirror=mirror, log=log.info)
    write_text(f"{md5 or md5sum(args.out)}  {Path(args.url).name}\n", args.out + ".md5")


if __name__ == "__main__":
    run_main(main)
