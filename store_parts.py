"""A packed pose store split into parts that ranks or nodes open independently.

`pack_parts` packs a pose folder into K complete packed stores (pose_store.py), one per part,
under one folder with a small manifest:

    packed_parts.json              {"format": "packed-pose-parts", "parts": K, "dirs": [...]}
    part-00000-of-00004/           a packed store (its own manifest, index and shards)
    ...

A clip's part is fixed by its name alone (CRC-32 of the UTF-8 name, modulo K), so a rank finds
the part of any clip of the label file without opening the other parts, and a node needs on disk
only the parts of its ranks. In training, rank r of W takes the parts p with p % W == r
(K must be a multiple of W); `PartedStore` opens a part when one of its clips is first read.
`open_store` opens whichever kind a folder holds.
"""
import json
import os
import zlib

import numpy as np

import pose_store
from durable import write_json_atomic
from keypoints import DataError

PARTS_MANIFEST = 'packed_parts.json'
PARTS_FORMAT = 'packed-pose-parts'


def part_dir_name(part, parts):
    return f'part-{part:05d}-of-{parts:05d}'


def parts_of(names, parts):
    """The part (int64) of each clip name (str or UTF-8 bytes)."""
    return np.fromiter((zlib.crc32(name if isinstance(name, bytes) else name.encode('utf-8'))
                        % parts for name in names), dtype=np.int64, count=len(names))


def is_parted_store(directory):
    return os.path.isfile(os.path.join(directory, PARTS_MANIFEST))


def open_store(pose_dir, packed_dir=None):
    """A PartedStore or PackedPoseStore in packed_dir, or in pose_dir if it holds one; else
    None (the clips are per-file pose pickles)."""
    directory = pose_dir if packed_dir is None else packed_dir
    if is_parted_store(directory):
        return PartedStore(directory)
    return pose_store.open_packed_store(pose_dir, packed_dir)


def pack_parts(pose_dir, out_dir, parts, progress=True, **pack_options):
    """Packs the .pkl files under pose_dir into `parts` packed stores under out_dir (each packed
    and resumed as pose_store.pack does, with pack_options); returns the parts manifest."""
    files = pose_store._list_pose_files(pose_dir, None)
    assigned = parts_of([name for name, _ in files], parts)
    os.makedirs(out_dir, exist_ok=True)
    dirs = [part_dir_name(part, parts) for part in range(parts)]
    manifests = []
    for part, folder in enumerate(dirs):
        members = [path for (_, path), owner in zip(files, assigned) if owner == part]
        if progress:
            print(f"part {part + 1} of {parts}: {len(members)} pose files")
        manifests.append(pose_store.pack(members, os.path.join(out_dir, folder), root=pose_dir,
                                         progress=progress, **pack_options))
    manifest = {'format': PARTS_FORMAT, 'parts': parts, 'dirs': dirs,
                'num_clips': sum(m['num_clips'] for m in manifests),
                'num_frames': sum(m['num_frames'] for m in manifests),
                'bad_files': [bad for m in manifests for bad in m['bad_files']]}
    write_json_atomic(os.path.join(out_dir, PARTS_MANIFEST), manifest)
    return manifest


class PartedStore:
    """Reads clips of a parted store; the same reading interface as PackedPoseStore."""

    def __init__(self, directory):
        self.directory = os.fspath(directory)
        path = os.path.join(self.directory, PARTS_MANIFEST)
        try:
            with open(path, encoding='utf-8') as f:
                self.manifest = json.load(f)
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: unreadable parts manifest ({error})") from None
        if self.manifest.get('format') != PARTS_FORMAT:
            raise DataError(f"{path}: not a parts manifest of a packed pose store")
        self.parts = int(self.manifest['parts'])
        self._stores = {}

    def __getstate__(self):
        return {'directory': self.directory, 'manifest': self.manifest, 'parts': self.parts}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._stores = {}

    def part(self, index):
        """The PackedPoseStore of part `index`, opened on first use."""
        if index not in self._stores:
            folder = os.path.join(self.directory, self.manifest['dirs'][index])
            if not pose_store.is_packed_store(folder):
                raise DataError(f"{folder}: part {index} of the packed store is not on this "
                                "machine (each rank needs the parts it trains on)")
            self._stores[index] = pose_store.PackedPoseStore(folder)
        return self._stores[index]

    def rank_parts(self, rank, world):
        """The parts rank `rank` of `world` trains on."""
        if self.parts % world:
            raise DataError(f"{self.directory}: a store of {self.parts} parts cannot be shared "
                            f"evenly by {world} ranks; repack with script/pack_poses.py --shards "
                            f"and a multiple of {world}")
        return [part for part in range(self.parts) if part % world == rank]

    def _store_of(self, name):
        return self.part(int(parts_of([name], self.parts)[0]))

    def read(self, name):
        return self._store_of(name).read(name)

    def length(self, name):
        return self._store_of(name).length(name)

    def span(self, name):
        return self._store_of(name).span(name)

    def __contains__(self, name):
        return name in self._store_of(name)

    def _per_part(self, names, method, width):
        names = np.asarray(names, dtype=bytes)
        owners = parts_of(names, self.parts)
        out = np.zeros((len(names), width), dtype=np.int64)
        for part in np.unique(owners).tolist():
            chosen = owners == part
            out[chosen] = getattr(self.part(part), method)(names[chosen])
        return out

    def spans(self, names):
        return self._per_part(names, 'spans', 2)

    def grid(self, name):
        return self._store_of(name).grid(name)
