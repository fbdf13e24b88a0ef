"""Command-line helpers shared by every entry point: each flag answers to both spellings, and
every numeric flag has its range checked as it is parsed.

Uni-Sign's scripts mix `--batch-size` and `--max_length`; here every flag is registered under
its dash and its underscore spelling, so a command line copied from either convention works.
Numeric flags take one of the ranged types below (`count`, `positive`, `fraction`, ...), never
a bare int or float: `--batch-size 0` or `--lr nan` stops at parse time with argparse's
`error: argument --batch-size/--batch_size: ...` line, before anything is read or built.
"""
import argparse
import math


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with a one-line error: a long usage text would bury the message."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def spellings(*names):
    """'--batch-size' -> ['--batch-size', '--batch_size'] (each given name first, no repeats)."""
    found = []
    for name in names:
        stem = name[2:]
        for variant in (name, "--" + stem.replace("-", "_"), "--" + stem.replace("_", "-")):
            if variant not in found:
                found.append(variant)
    return found


def add_flag(parser, *names, **kwargs):
    """parser.add_argument under both spellings of every long name; dest from the first name.
    Positional arguments and short options pass through unchanged."""
    if kwargs.get("type") in (int, float) and "choices" not in kwargs:
        raise TypeError(f"{names[0]}: numeric flags take a ranged type from cli.py "
                        "(count, positive, fraction, ...), not a bare int or float")
    if not names[0].startswith("--"):
        return parser.add_argument(*names, **kwargs)
    long_names = [n for n in names if n.startswith("--")]
    short_names = [n for n in names if not n.startswith("--")]
    kwargs.setdefault("dest", names[0][2:].replace("-", "_"))
    return parser.add_argument(*short_names, *spellings(*long_names), **kwargs)


def int_list(text):
    """'64,128,256' or '64 128 256' -> [64, 128, 256]."""
    try:
        return [int(x) for x in str(text).replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got '{text}'")


# ------------------------------------------------------------------- ranged numeric types

def _bounds_text(kind, low, high, low_open, high_open):
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return f"{kind} {' and '.join(parts)}".strip()


def int_range(low=None, high=None):
    """An argparse type: an integer within [low, high] (either bound may be None)."""
    wanted = _bounds_text("an integer", low, high, False, False)

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got '{text}'") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value
    parse.__name__ = wanted
    return parse


def float_range(low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a finite number within the bounds (open or closed, either may be None)."""
    wanted = _bounds_text("a finite number", low, high, low_open, high_open)

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got '{text}'") from None
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or below or above:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value
    parse.__name__ = wanted
    return parse


count = int_range(1)                      # sizes, counts, lengths, widths
non_negative_int = int_range(0)           # counts where 0 means "off" or "all"
seed = int_range(0, 2**32 - 1)            # numpy's seed range
positive = float_range(0, low_open=True)  # learning rates, temperatures, frame rates
non_negative = float_range(0)             # weights, decays, clipping norms (0: off)
fraction = float_range(0, 1, high_open=True)  # label smoothing, momentum, betas
finite = float_range()


def odd_count(text):
    """An odd integer >= 1 (a 'same'-padded temporal kernel)."""
    value = count(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"expected an odd integer >= 1, got {value}")
    return value


def count_list(text):
    """int_list whose every entry is >= 1 (layer widths)."""
    values = int_list(text)
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1 separated by commas, "
                                         f"got '{text}'")
    return values
