"""``fcnseg data``: fetch the data sets of the papers, and prepare what their reference code made
offline from them (FSDS's augmented SK-LARGE)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fcnseg import download
from fcnseg.logs import show_bars

PREPARED = ("sk-large",)
"""Data sets ``fcnseg data prepare`` knows how to prepare."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="fetch the papers' data sets; prepare FSDS's augmented SK-LARGE"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = actions.add_parser(
        "fetch",
        help="download, verify and extract a data set archive into a folder (once)",
        description="Download one of the data sets' archives into ROOT and extract it there; a second "
        "run finds it done. Without network (or where a site answers with a page) it says what to "
        "fetch by hand and where to put it; FCNSEG_MIRROR downloads from a mirror.",
    )
    fetch.add_argument(
        "name", choices=sorted(download.ARCHIVES), metavar="NAME", help=", ".join(download.ARCHIVES)
    )
    fetch.add_argument("root", type=Path, help="folder to download and extract into")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(run=run_fetch)
    prepare = actions.add_parser(
        "prepare",
        help="make FSDS's offline augmentation of SK-LARGE's training images (36 copies of each)",
        description="Write 36 copies of every training image of SK-LARGE (scales 0.8, 1, 1.2; rotations "
        "by 0, 90, 180, 270 degrees; no flip, left-right, up-down) with their edge and skeleton maps "
        "as the split train_aug, whose skeleton scales are computed anew when read, as zeakey/skeleton "
        "trains on them (recipes/fsds_vgg16_sk-large_batch1x2.toml). Copies already there are kept: "
        "an interrupted run continues.",
    )
    prepare.add_argument("name", choices=PREPARED, help="the data set")
    prepare.add_argument("root", type=Path, help="its folder (images/train and groundTruth/train)")
    prepare.add_argument("--quiet", action="store_true", help="no progress bar")
    prepare.set_defaults(run=run_prepare)


def run_fetch(args: argparse.Namespace) -> int:
    root = download.fetch(args.name, args.root, progress=not args.quiet)
    print(f"{args.name}: {root}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from fcnseg.data.skeleton_augment import AUGMENTED_SPLIT, augment_skeletons

    written, kept = augment_skeletons(args.root, args.name, progress=show_bars(not args.quiet))
    print(
        f"{args.name}: {written} copies written, {kept} already there: split {AUGMENTED_SPLIT} of {args.root}"
    )
    return 0
