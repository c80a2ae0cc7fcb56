"""``huselet pack DIR -o FILE``: build a package image (deterministic), as the daemon does."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from huselet.cmd.common import Exit, Subparsers, describe_os_error, load_config


def add_parser(sub: Subparsers) -> None:
    """The ``pack`` subcommand's arguments."""
    pack = sub.add_parser("pack", help="pack a directory into a package image")
    pack.add_argument("directory")
    pack.add_argument(
        "--output", "-o", required=True, help="image file, or a directory for <digest>.hlimg"
    )
    pack.add_argument("--zstd", action="store_true", help="also write <digest>.hlimg.zst")
    pack.add_argument(
        "--config", help="node config whose state dir holds the wheel cache (default: built-in)"
    )
    pack.add_argument(
        "--allow-sdist", action="store_true", help="let pip build sdists from requirements.txt"
    )
    pack.add_argument("--json", action="store_true", help="machine-readable output")
    pack.set_defaults(func=cmd_pack)


def cmd_pack(args: argparse.Namespace) -> int:
    from cache.errors import CacheError
    from huselet.code.dependencies import DependencyOptions
    from huselet.code.packing import build_image
    from huselet.errors import ConfigError

    try:
        # The daemon's packer, with the node's wheel cache: one path, one digest.
        cache = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return Exit.USAGE
    deps = DependencyOptions(
        cache_dir=cache.node.state_dir / "cache",
        allow_sdist=cache.cache.allow_sdist or args.allow_sdist,
        timeout_s=cache.cache.pip_timeout_s,
    )

    def progress(report: dict[str, Any]) -> None:
        fields = " ".join(f"{k}={v}" for k, v in report.items() if k not in ("phase", "done"))
        print(f"huselet pack: {report['phase']}: {fields}", file=sys.stderr)

    try:
        info = build_image(Path(args.directory), Path(args.output), deps, progress)
        compressed = _write_zstd(info.path) if args.zstd else None
    except CacheError as exc:
        print(f"huselet pack: {exc}", file=sys.stderr)
        return Exit.USAGE
    except OSError as exc:
        print(f"huselet pack: {describe_os_error(exc)}", file=sys.stderr)
        return Exit.FAILURE
    report = {"digest": info.digest, "size": info.size, "files": info.files, "path": str(info.path)}
    if compressed is not None:
        report["zstd"] = str(compressed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:<7} {value}")
    for skipped in info.skipped:
        print(f"huselet pack: left out special file {skipped}", file=sys.stderr)
    return Exit.OK


def _write_zstd(image: Path) -> Path:
    """The transfer copy origins serve: ``<digest>.hlimg.zst`` next to the image."""
    import zstandard

    from cache.validate import inspect_image

    target = image.with_name(f"{inspect_image(image).digest}.hlimg.zst")
    tmp = target.with_name(target.name + ".tmp")
    with open(image, "rb") as src, open(tmp, "wb") as dst:
        zstandard.ZstdCompressor(level=10, threads=-1).copy_stream(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)
    return target
