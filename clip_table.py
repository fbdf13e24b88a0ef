"""Per-clip label metadata in compact arrays: a split's entries as a few numpy buffers instead
of one Python dict per clip.

DataLoader workers are forked from the trainer and read the entries of the clips they load.
Reading a Python object writes its reference count, so a list of a million dicts is copied page
by page into every worker over an epoch; numpy buffers are only read and stay shared. A
`ClipTable` is a read-only sequence of entry dicts ({name, text, gloss, pose_file, signer}),
each built when it is asked for.
"""
import numpy as np

FIELDS = ('name', 'text', 'gloss', 'pose_file', 'signer')
DEFAULT_SIGNER = 'signer'


class StringColumn:
    """Strings as one UTF-8 buffer (uint8) and the end offset of each (int64)."""

    def __init__(self, data, ends):
        self.data, self.ends = data, ends

    @classmethod
    def from_strings(cls, strings):
        return cls.from_encoded([text.encode('utf-8') for text in strings])

    @classmethod
    def from_encoded(cls, encoded):
        """The column of a list of UTF-8 bytes strings."""
        ends = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
        data = np.frombuffer(b''.join(encoded), dtype=np.uint8).copy()
        return cls(data, ends.astype(np.int64))

    def __len__(self):
        return len(self.ends)

    def bytes(self, index):
        start = int(self.ends[index - 1]) if index > 0 else 0
        return self.data[start:int(self.ends[index])].tobytes()

    def __getitem__(self, index):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is outside a column of {len(self)}")
        return self.bytes(index).decode('utf-8')

    def __iter__(self):
        data, start = self.data.tobytes(), 0
        for end in self.ends.tolist():
            yield data[start:end].decode('utf-8')
            start = end

    def take(self, indices):
        """A column of the strings at `indices`, in that order (vectorised, no loop per string)."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = np.concatenate([np.zeros(1, np.int64), self.ends[:-1]])[indices]
        lengths = self.ends[indices] - starts
        ends = np.cumsum(lengths, dtype=np.int64)
        # byte k of new string j is old byte starts[j] + k
        total = int(ends[-1]) if len(ends) else 0
        gather = np.repeat(starts - (ends - lengths), lengths) + np.arange(total)
        return StringColumn(self.data[gather], ends)

    @property
    def nbytes(self):
        return self.data.nbytes + self.ends.nbytes


class ClipTable:
    """The entries of a split: entry i is {'name', 'text', 'gloss' (list), 'pose_file',
    'signer'}. Glosses are stored joined by spaces (labels.checked_entry splits them at
    whitespace, so none holds one)."""

    def __init__(self, columns):
        self.columns = columns

    @classmethod
    def from_entries(cls, entries):
        values = {field: [] for field in FIELDS}  # UTF-8 bytes: the entries' dicts can go
        for entry in entries:
            values['name'].append(entry['name'].encode('utf-8'))
            values['text'].append(entry['text'].encode('utf-8'))
            values['gloss'].append(' '.join(entry['gloss']).encode('utf-8'))
            values['pose_file'].append(entry['pose_file'].encode('utf-8'))
            values['signer'].append(entry.get('signer', DEFAULT_SIGNER).encode('utf-8'))
        return cls({field: StringColumn.from_encoded(values.pop(field)) for field in FIELDS})

    def __len__(self):
        return len(self.columns['name'])

    def __getitem__(self, index):
        entry = {field: column[index] for field, column in self.columns.items()}
        entry['gloss'] = entry['gloss'].split()
        return entry

    def __iter__(self):
        for values in zip(*(self.columns[field] for field in FIELDS)):
            entry = dict(zip(FIELDS, values))
            entry['gloss'] = entry['gloss'].split()
            yield entry

    def value(self, field, index):
        """One field of one entry, without building the entry."""
        return self.columns[field][index]

    def column(self, field):
        """Every entry's value of `field` as a list (glosses as space-joined strings)."""
        return list(self.columns[field])

    def take(self, indices):
        """The table of the entries at `indices`, in that order."""
        return ClipTable({field: column.take(indices) for field, column in self.columns.items()})

    @property
    def nbytes(self):
        return sum(column.nbytes for column in self.columns.values())
