"""A split's label entries, read once per label file and kept for the next start of a run.

Parsing CSL-News's label file (a JSON list of a million entries) and checking every entry takes
tens of seconds and GBs of Python objects. A corpus shipped as one list (its splits held out
from the same file) is parsed once for all its splits, and each split's entries, a ClipTable
(clip_table.py) with the messages of its unusable entries, are kept in the run's cache folder
as `labels.<phase>.npz`, stamped with the label file's path, size, modification and
status-change times and inode, its format and the held-out rule. A start with the same file
loads the arrays instead of parsing it; a cache that does not load or match its checksum is
reported and the file parsed again.
"""
import os

import numpy as np

from clip_table import FIELDS, ClipTable, StringColumn
from durable import read_checked_npz, write_checked_npz
from keypoints import DataError, require_file
from labels import iter_label_entries

LABELS_VERSION = 1
_parsed = {}  # the last label file parsed: key -> (table, positions, problems, entries)


def file_stamp(path):
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def parse(path, label_format):
    """(ClipTable of the usable entries, their positions in the file, [(position, message)] of
    the unusable ones, number of entries); a file parsed last time is not parsed again."""
    key = (os.path.abspath(path), tuple(file_stamp(path)), label_format)
    if key not in _parsed:
        _parsed.clear()  # one file at a time: the splits of a corpus are read one after another
        good, problems = [], []

        def usable():  # entries go into the table's columns as they are read
            for position, entry in enumerate(iter_label_entries(path, label_format)):
                if isinstance(entry, DataError):
                    problems.append((position, str(entry)))
                else:
                    good.append(position)
                    yield entry

        table = ClipTable.from_entries(usable())
        _parsed[key] = (table, np.array(good, dtype=np.int64), problems,
                        len(good) + len(problems))
    return _parsed[key]


def forget():
    """Drops the last parsed file (once every split is built)."""
    _parsed.clear()


def split_entries(path, label_format, phase, held_out=0.0, cache_folder=None, write=True):
    """(ClipTable of the usable entries of the phase's split, [messages of the unusable ones]).
    held_out: the fraction at the file's end that is dev and test (datasets.held_out_split);
    cache_folder: where the split is kept (written only with `write`)."""
    require_file(path, "label file")
    stamp = {'version': LABELS_VERSION, 'label_file': os.path.abspath(path),
             'stamp': file_stamp(path), 'format': label_format, 'phase': phase,
             'held_out': held_out}
    cache = os.path.join(cache_folder, f'labels.{phase}.npz') if cache_folder else None
    kept = _load(cache, stamp)
    if kept is not None:
        return kept
    table, positions, problems, total = parse(path, label_format)
    if held_out:  # the boundary counts unusable entries too, so one does not move it
        boundary = int(total * (1 - held_out))
        train = phase == 'train'
        table = table.take(np.flatnonzero((positions < boundary) == train))
        problems = [message for position, message in problems if (position < boundary) == train]
    else:
        problems = [message for _, message in problems]
    if cache and write:
        messages = StringColumn.from_strings(problems)
        arrays = {'problems_data': messages.data, 'problems_ends': messages.ends}
        for field, column in table.columns.items():
            arrays.update({f'{field}_data': column.data, f'{field}_ends': column.ends})
        write_checked_npz(cache, arrays, stamp)
    return table, problems


def _load(path, stamp):
    if path is None or not os.path.isfile(path):
        return None
    try:
        arrays, meta = read_checked_npz(path)
        columns = {field: StringColumn(arrays[f'{field}_data'], arrays[f'{field}_ends'])
                   for field in FIELDS}
        problems = list(StringColumn(arrays['problems_data'], arrays['problems_ends']))
    except Exception as error:  # a damaged file can fail in any of numpy's or zip's ways
        print(f"warning: label cache {path} is corrupt ({type(error).__name__}: {error}); "
              "reading the label file again")
        return None
    if meta != stamp:
        return None  # another label file, or the file changed
    return ClipTable(columns), problems
