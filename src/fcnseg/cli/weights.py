"""``fcnseg weights``: the published weights by name, what they are and whether they are cached."""

from __future__ import annotations

import argparse

from fcnseg.models.registry import BUILDERS
from fcnseg.weights import hub


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("weights", help="published weights by name: list them, fetch one")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="names, nets, classes, data sets, sizes, scores, cache state")
    listing.set_defaults(run=run_list)
    get = actions.add_parser("get", help="download, verify and convert one into the cache; print its path")
    get.add_argument("name", help="a name from 'fcnseg weights list', or imagenet / imagenet-caffe")
    get.add_argument(
        "--arch",
        choices=sorted(BUILDERS),
        help="for ImageNet classifiers and trunks: the net to convert it for",
    )
    get.set_defaults(run=run_get)


def _size(name: str) -> str:
    stated = hub.get(name).file.stated_size
    if stated and hub.get(name).file.size is None:
        return f"{stated} (stated)"
    value, exact = hub.download_size(name)
    return f"{value / 1e6:.1f} MB" if exact else f"~{value / 1e6:.0f} MB"


def run_list(args: argparse.Namespace) -> int:
    columns = ("name", "net", "classes", "data set", "download", "verified by", "published score", "cached")
    rows = []
    for name, weights in hub.WEIGHTS.items():
        net = f"{weights.arch} (classifier)" if weights.is_classifier else weights.arch
        if weights.is_trunk:
            net = f"trunk of {'/'.join(hub.TRUNKS[weights.arch])}"
        classes = "+".join(map(str, weights.heads)) if weights.heads else str(weights.num_classes)
        size, verified = _size(name), weights.file.verified_by
        rows.append(
            (name, net, classes, weights.dataset, size, verified, weights.score or "-", hub.cache_state(name))
        )
    widths = [max(len(row[i]) for row in (columns, *rows)) for i in range(len(columns))]
    for row in (columns, *rows):
        cells = [
            cell.rjust(w) if i == 2 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    print()
    print("scores: mean IU on PASCAL VOC (seg11valid, seg12test) as the FCN authors publish them; ImageNet")
    print("accuracy of the classifiers; the HED, FSDS and SSD authors' own numbers; torchvision's FCNs' as")
    print("torchvision publishes them. download: ~ sizes are estimates (4 bytes per parameter), (stated)")
    print("ones as their READMEs round them; others are exact. verified by: the published checksum (8")
    print("digits: the start of it that torchvision's file names give) and size every download must match;")
    print("no published checksum: the file is checked to hold its net (layers, widths, classes) and its")
    print("SHA-256 recorded at the first download, which later downloads must match; http: no HTTPS source.")
    print("cached unchecked: a file placed by hand, checked by 'fcnseg weights get NAME'.")
    print("\n'fcnseg train --init NAME' takes a model above, a classifier or trunk that fits the net, or")
    for alias, by_family in hub.INIT_NAMES.items():
        print(f"  {alias}: {', '.join(f'{name} for {family} nets' for family, name in by_family.items())}")
    print(f"\ncache: {hub.home()} (set FCNSEG_HOME to move it; FCNSEG_MIRROR to download from a mirror)")
    return 0


def run_get(args: argparse.Namespace) -> int:
    name = args.name
    if args.arch is not None:
        path = hub.resolve(name, arch=args.arch)
    elif name in hub.WEIGHTS and hub.get(name).starts:
        path = hub.fetch(name)
    else:
        path = hub.checkpoint(name)
    print(path)
    return 0
