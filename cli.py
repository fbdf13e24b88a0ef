"""Command-line helpers shared by every entry point: each flag answers to both spellings.

Uni-Sign's scripts mix `--batch-size` and `--max_length`; here every flag is registered under
its dash and its underscore spelling, so a command line copied from either convention works.
"""


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
    if not names[0].startswith("--"):
        return parser.add_argument(*names, **kwargs)
    long_names = [n for n in names if n.startswith("--")]
    short_names = [n for n in names if not n.startswith("--")]
    kwargs.setdefault("dest", names[0][2:].replace("-", "_"))
    return parser.add_argument(*short_names, *spellings(*long_names), **kwargs)


def int_list(text):
    """'64,128,256' or '64 128 256' -> [64, 128, 256]."""
    return [int(x) for x in str(text).replace(",", " ").split()]
