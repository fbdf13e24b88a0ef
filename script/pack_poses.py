"""Packs a folder of per-clip pose pickles into a packed pose store (see pose_store.py).

    python script/pack_poses.py --pose_dir dataset/CSL_News/pose_format \
        --out dataset/CSL_News/packed --workers 16
    python script/pack_poses.py --out dataset/CSL_News/packed --verify_only
    python script/pack_poses.py --pose_dir dataset/CSL_News/pose_format \
        --out dataset/CSL_News/packed --shards 16     # 16 parts, opened by ranks independently

Re-running the same command after an interruption finishes the remaining shards; a store of an
older format version is refused until repacked with --no_resume. Train on the store by passing
its folder as the pose folder (--pose_root layout) or as packed_dir. With --shards K the store
is split into K parts (store_parts.py): rank r of W trains on the parts p with p % W == r, so a
node needs only its ranks' parts.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
import pose_store  # noqa: E402
import store_parts  # noqa: E402
from datasets import DataError  # noqa: E402


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    g = parser.add_argument_group('packing')
    cli.add_flag(g, '--pose_dir', metavar='DIR',
                 help='folder searched recursively for .pkl pose files')
    cli.add_flag(g, '--out', required=True, metavar='DIR', help='store folder (created if missing)')
    cli.add_flag(g, '--workers', type=cli.count, default=os.cpu_count() or 1,
                         help='reading processes (default: all cores)')
    cli.add_flag(g, '--shard_size', type=cli.count, default=pose_store.DEFAULT_SHARD_SIZE,
                         help='clips per shard')
    cli.add_flag(g, '--shards', type=cli.count, default=1,
                 help='split the store into this many parts that ranks open independently')
    cli.add_flag(g, '--skip_bad', action='store_true',
                         help='leave out unusable pose files, listing them in the manifest')
    cli.add_flag(g, '--no_resume', action='store_true',
                         help='discard an earlier (partial) store in --out and pack from scratch')
    cli.add_flag(g, '--quiet', action='store_true', help='no progress bar')
    g = parser.add_argument_group('checking')
    cli.add_flag(g, '--verify', action='store_true', help='check every checksum afterwards')
    cli.add_flag(g, '--verify_only', action='store_true',
                         help='only check the checksums of the store in --out')
    args = parser.parse_args(argv)
    if not args.verify_only and not args.pose_dir:
        parser.error('--pose_dir is required unless --verify_only is given')
    if args.verify_only and args.shards > 1:
        parser.error('--shards acts on packing, which --verify_only does not do (the parts '
                     'manifest tells how a store is split)')
    return args


def verify(out_dir):
    if store_parts.is_parted_store(out_dir):
        parted = store_parts.PartedStore(out_dir)
        problems = [problem for part in range(parted.parts)
                    for problem in parted.part(part).verify()]
    else:
        problems = pose_store.PackedPoseStore(out_dir).verify()
    for problem in problems:
        print(problem)
    print(f"verify: {'OK' if not problems else f'{len(problems)} problems'}")
    return not problems


def main(argv=None):
    args = parse_args(argv)
    try:
        if not args.verify_only:
            options = dict(shard_size=args.shard_size, workers=args.workers,
                           resume=not args.no_resume, progress=not args.quiet,
                           skip_bad=args.skip_bad)
            if args.shards > 1:
                manifest = store_parts.pack_parts(args.pose_dir, args.out, args.shards, **options)
                where = f"{args.shards} parts"
            else:
                manifest = pose_store.pack(args.pose_dir, args.out, **options)
                where = f"{len(manifest['shards'])} shards"
            print(f"{args.out}: {manifest['num_clips']} clips, {manifest['num_frames']} frames "
                  f"in {where}, {len(manifest['bad_files'])} left out")
        if args.verify or args.verify_only:
            return 0 if verify(args.out) else 1
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
