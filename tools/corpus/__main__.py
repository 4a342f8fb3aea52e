"""Command line of the corpus harness (docs/corpus.md).

    python -m tools.corpus list                                 catalogue and cached state
    python -m tools.corpus build NAME... [--kind K] [--force]   build or reuse; NAME may be 'all'
    python -m tools.corpus path NAME [--kind K]                 the image directory (built if needed)
    python -m tools.corpus prune                                remove images no catalogue entry produces
"""

import argparse
import shutil
import sys

from . import cache, catalog
from .build import Image, cached_dir, ensure_image
from .errors import BuildError


def _summary(image: Image, state: str) -> str:
    return "%-20s %-4s %-6s %7.1f s %8.1f MB  %s" % (
        image.name, image.kind, state, image.build_seconds, image.size_bytes / 1e6, image.directory,
    )


def _build(args) -> None:
    names = list(catalog.CATALOGUE) if args.names == ["all"] else args.names
    total = 0.0
    for name in names:
        for kind in [args.kind] if args.kind else catalog.get(name).kinds:
            was_cached = not args.force and cache.is_complete(cached_dir(name, kind))
            image = ensure_image(name, kind, force=args.force)
            total += 0 if was_cached else image.build_seconds
            print(_summary(image, "cached" if was_cached else "built"), flush=True)
    print("built in %.1f s" % total)


def _list(args) -> None:
    for deployment in catalog.CATALOGUE.values():
        for kind in deployment.kinds:
            try:
                directory = cached_dir(deployment.name, kind)
            except BuildError as error:
                print("%-20s %-4s unavailable: %s" % (deployment.name, kind, error))
                continue
            if cache.is_complete(directory):
                print(_summary(Image.load(directory), "cached"))
            else:
                print("%-20s %-4s %-6s %s" % (deployment.name, kind, "-", deployment.description))


def _path(args) -> None:
    print(ensure_image(args.name, args.kind).directory)


def _prune(args) -> None:
    """Images whose key no catalogue entry produces any more (after a change), and failed builds."""
    current = {cached_dir(d.name, k) for d in catalog.CATALOGUE.values() for k in d.kinds}
    root = cache.root()
    stale = [p for p in root.iterdir() if cache.is_complete(p) and p not in current] if root.is_dir() else []
    for path in stale + [root / ".failed"]:
        if path.exists():
            print("removing %s" % path)
            shutil.rmtree(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.corpus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build (or reuse) images and print their build time and size")
    build.add_argument("names", nargs="+", metavar="NAME", help="catalogue names, or 'all'")
    build.add_argument("--kind", choices=catalog.KINDS, help="default: every kind the entry is built as")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(run=_build)
    commands.add_parser("list", help="the catalogue and what is cached").set_defaults(run=_list)
    path = commands.add_parser("path", help="print an image's cache directory, building it if needed")
    path.add_argument("name", metavar="NAME")
    path.add_argument("--kind", choices=catalog.KINDS, help="default: the entry's first kind")
    path.set_defaults(run=_path)
    commands.add_parser("prune", help="remove stale images and failed builds").set_defaults(run=_prune)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except BuildError as error:
        print("corpus: error: %s" % (error.args[0] if error.args else error), file=sys.stderr)
        if getattr(error, "tail", ""):
            print(error.tail, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
