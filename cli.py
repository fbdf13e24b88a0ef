"""Command-line helpers shared by every entry point: each flag answers to both spellings, and
every numeric flag has its range checked as it is parsed.

Uni-Sign's scripts mix `--batch-size` and `--max_length`; here every flag is registered under
its dash and its underscore spelling, so a command line copied from either convention works.
`--help` (HelpFormatter) lists each flag once, in the spelling it was registered with, with
its default.
Numeric flags take one of the ranged types below (`count`, `positive`, `fraction`, ...), never
a bare int or float: `--batch-size 0` or `--lr nan` stops at parse time with argparse's
`error: argument --batch-size/--batch_size: ...` line, before anything is read or built.
"""
import argparse
import copy
import math


class HelpFormatter(argparse.HelpFormatter):
    """Lists a flag under the spellings it was registered with (the other spelling still
    parses) and appends `(default: X)` where the default says something: not for None, an empty
    value, an off switch or a refused flag, nor where the help text speaks of its default."""

    def _format_action_invocation(self, action):
        hidden = getattr(action, "hidden_spellings", ())
        if hidden:
            action = copy.copy(action)
            action.option_strings = [o for o in action.option_strings if o not in hidden]
        return super()._format_action_invocation(action)

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if isinstance(action, argparse.BooleanOptionalAction) and "default" not in text:
            return f"{text} (default: {'on' if default else 'off'})".lstrip()
        if ("default" in text or text.startswith("refused") or not action.option_strings
                or action.nargs == 0
                or default in (None, "", [], argparse.SUPPRESS)):
            return text
        if isinstance(default, (list, tuple)):
            default = ",".join(str(v) for v in default)
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with a one-line error (a long usage text would bury the message) and
    the help layout of HelpFormatter."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

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
    Positional arguments and short options pass through unchanged. The spellings not given
    here parse the same but are left out of --help (HelpFormatter)."""
    if kwargs.get("type") in (int, float) and "choices" not in kwargs:
        raise TypeError(f"{names[0]}: numeric flags take a ranged type from cli.py "
                        "(count, positive, fraction, ...), not a bare int or float")
    if not names[0].startswith("--"):
        return parser.add_argument(*names, **kwargs)
    long_names = [n for n in names if n.startswith("--")]
    short_names = [n for n in names if not n.startswith("--")]
    kwargs.setdefault("dest", names[0][2:].replace("-", "_"))
    if getattr(kwargs.get("type"), "metavar", None) and "choices" not in kwargs:
        kwargs.setdefault("metavar", kwargs["type"].metavar)
    action = parser.add_argument(*short_names, *spellings(*long_names), **kwargs)
    shown = set(long_names) | {"--no-" + name[2:] for name in long_names}
    hidden = [o for o in action.option_strings if o.startswith("--") and o not in shown]
    if hidden:
        action.hidden_spellings = frozenset(hidden)
        if isinstance(action, argparse.BooleanOptionalAction):  # its usage lists every string
            action.format_usage = lambda: " | ".join(
                o for o in action.option_strings if o not in hidden)
    return action


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
    parse.metavar = "N"
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
    parse.metavar = "X"
    return parse


count = int_range(1)                      # sizes, counts, lengths, widths
non_negative_int = int_range(0)           # counts where 0 means "off" or "all"
seed = int_range(0, 2**32 - 1)            # numpy's seed range
positive = float_range(0, low_open=True)  # learning rates, temperatures, frame rates
non_negative = float_range(0)             # weights, decays, clipping norms (0: off)
fraction = float_range(0, 1, high_open=True)  # label smoothing, momentum, betas
finite = float_range()


def zero_stage(text):
    """--zero_stage's value: 0 to 3, or auto (ds_config.resolve_zero_stage)."""
    if text == "auto":
        return text
    if text not in ("0", "1", "2", "3"):
        raise argparse.ArgumentTypeError(f"expected 0, 1, 2, 3 or auto, got {text!r}")
    return int(text)


def odd_count(text):
    """An odd integer >= 1 (a 'same'-padded temporal kernel)."""
    value = count(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"expected an odd integer >= 1, got {value}")
    return value


odd_count.metavar = "N"


def count_list(text):
    """int_list whose every entry is >= 1 (layer widths)."""
    values = int_list(text)
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1 separated by commas, "
                                         f"got '{text}'")
    return values


count_list.metavar = "N,N,..."
