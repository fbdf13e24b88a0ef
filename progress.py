"""Progress of long loops: a tqdm bar with rate and time left on a terminal; on a stream that is
not one (CI, a log file, a scheduler's output) plain lines every few items instead, each with the
same figures, since a bar's carriage returns make such logs unreadable.

`track` wraps an iterable of steps. Besides the count it reports the time per item, the share of it spent
waiting for the next item (a slow loader shows here), items per second (clips per second when
each item is a batch of `per_item`), the time left and the peak memory (GPU memory allocated on a
GPU, the process's resident memory otherwise). Only the main process of a run reports.
`Meter` counts work that arrives in chunks (clips checked by worker processes): a bar on a
terminal, otherwise a line every `seconds` with the rate and the time left.
"""
import datetime
import os
import resource
import sys
import time

from tqdm import tqdm


def interactive(stream=None):
    """Whether `stream` (default stderr) is a terminal that can redraw a bar."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


def peak_memory_gb():
    """Peak GPU memory allocated by torch on a GPU, else the process's peak resident memory."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def duration(seconds):
    return str(datetime.timedelta(seconds=int(round(seconds))))


class Figures:
    """Timing of a loop: total and data-wait seconds over the items seen so far."""

    def __init__(self, total, per_item):
        self.total, self.per_item = total, per_item
        self.start = time.perf_counter()
        self.waited = 0.0
        self.done = 0

    def summary(self):
        elapsed = time.perf_counter() - self.start
        per = elapsed / max(self.done, 1)
        parts = [f"{per:.3f} s/it", f"data {self.waited / max(self.done, 1):.3f} s"]
        if self.per_item:
            parts.append(f"{self.per_item * self.done / max(elapsed, 1e-9):.1f} clips/s")
        if self.total:
            parts.append(f"left {duration(per * (self.total - self.done))}")
        parts.append(f"mem {peak_memory_gb():.2f} GB")
        return ", ".join(parts)


def track(iterable, total, header, every, stats=dict, per_item=None, show=True, stream=None):
    """Yields the items of `iterable` while reporting progress (see the module docstring).
    `stats()` returns the running scalars to show (e.g. the loss); `every`: the line interval
    off a terminal (0: none); `show` False reports nothing (other ranks)."""
    figures = Figures(total, per_item)
    bar = None
    if show and interactive(stream):
        bar = tqdm(total=total, desc=header.strip(), file=stream or sys.stderr, leave=False,
                   dynamic_ncols=True)
    items = iter(iterable)
    try:
        while True:
            asked = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            figures.waited += time.perf_counter() - asked
            yield item
            figures.done += 1
            last = figures.done == total
            values = "  ".join(f"{k}: {v:.4g}" for k, v in stats().items())
            if bar is not None:
                bar.set_postfix_str(f"{values}  {figures.summary()}", refresh=False)
                bar.update(1)
            elif show and every and ((figures.done - 1) % every == 0 or last):
                print(f"{header} [{figures.done}/{total}]  {values}  ({figures.summary()})",
                      file=stream or sys.stdout, flush=True)
    finally:
        if bar is not None:
            bar.close()


class Meter:
    """Progress of `total` units done in chunks (`update(n)`): a tqdm bar on a terminal;
    elsewhere a line every `seconds` (0: every update) and, when any was printed or `final`
    is set, one at `close()`. `enabled` False reports nothing."""

    def __init__(self, total, desc, unit="clips", seconds=30, enabled=True, final=False,
                 stream=None, initial=0):
        self.total, self.desc, self.unit, self.seconds = total, desc, unit, seconds
        self.enabled, self.final, self.stream = enabled, final, stream
        self.done = self.initial = initial  # `initial`: done before (a resumed job)
        self.start = self.last = time.monotonic()
        self.shown = None  # units done at the last line printed
        self.bar = tqdm(total=total, desc=desc, unit=unit.rstrip("s"), initial=initial,
                        file=stream or sys.stderr, dynamic_ncols=True) \
            if enabled and interactive(stream) else None

    def update(self, count=1):
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.enabled and time.monotonic() - self.last >= self.seconds:
            self.last = time.monotonic()
            self.line()

    def line(self):
        seconds = max(time.monotonic() - self.start, 1e-9)
        rate = (self.done - self.initial) / seconds
        left = f", left {duration((self.total - self.done) / rate)}" \
            if rate and self.done < self.total else ""
        print(f"{self.desc}: {self.done} of {self.total} {self.unit} ({rate:.0f} {self.unit}/s"
              f"{left})", file=self.stream or sys.stdout, flush=True)
        self.shown = self.done

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and (self.shown is not None or self.final) and self.shown != self.done:
            self.line()
