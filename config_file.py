"""--config FILE: flag values from a YAML or JSON file, and run.yaml, the file a run leaves to be
reused with --config.

A key is a flag's name in either spelling without the dashes (`batch_size: 8`, `batch-size:
8`); a value is what the flag takes on the command line: a number or a word, a list for a flag
of several values or widths (`stgcn_channels: [64, 128, 256]` or `"64,128,256"`), true or
false for a switch (`use_signcl: true`; false leaves it off). The file becomes command-line
tokens placed before the real ones, so the command line overrides it, each value is checked
by the flag's own ranged type, and a flag given in the file counts as given: one that cannot
act is refused as on the command line (flags.refusals). Before that, every key and value is
checked here, so an unknown key, a wrong type or a value out of range is an error naming the
file and the key.
"""
import argparse
import difflib
import json
import os

import yaml

from cli import add_flag

NOT_IN_FILES = {"help", "config"}
# Left out of run.yaml: set by the launcher, the file itself, and a one-off removal of a run.
NOT_SAVED = {"local_rank", "config", "overwrite"}


class ConfigFileError(Exception):
    """A config file that cannot be used; the message names the file and the key."""


def config_path(argv):
    """The --config FILE given in `argv` (the last one when repeated), or None."""
    finder = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add_flag(finder, "--config", default=None)
    try:
        known, _ = finder.parse_known_args(argv)
    except argparse.ArgumentError:  # `--config` without a value: the full parse says so
        return None
    return known.config


def load(path):
    """The file's {key: value} mapping (JSON for .json, YAML otherwise)."""
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f) if path.lower().endswith(".json") else yaml.safe_load(f)
    except OSError as error:
        raise ConfigFileError(f"--config {path}: cannot be read ({error.strerror or error})")
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
        kind = "JSON" if path.lower().endswith(".json") else "YAML"
        raise ConfigFileError(f"--config {path}: not valid {kind} ({error})".replace("\n", " "))
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigFileError(f"--config {path}: expected a mapping of flag names to values, "
                              f"got a {type(values).__name__}")
    return values


def find_action(parser, path, key):
    """The parser's action for `key`, or ConfigFileError naming the closest flags."""
    if not isinstance(key, str):
        raise ConfigFileError(f"--config {path}: key {key!r} is not a flag name")
    actions = parser._option_string_actions
    action = actions.get("--" + key.lstrip("-"))
    if action is None or action.dest in NOT_IN_FILES:
        names = sorted(o[2:] for o, a in actions.items()
                       if o.startswith("--") and a.dest not in NOT_IN_FILES)
        close, dests = [], set()
        for name in difflib.get_close_matches(key, names, n=6):  # one spelling per flag
            if actions["--" + name].dest not in dests:
                dests.add(actions["--" + name].dest)
                close.append(name)
        close = close[:3]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigFileError(f"--config {path}: {key}: unknown flag{hint}")
    return action


def check_value(action, text):
    """`text` converted by the flag's type and checked against its choices, as argparse does."""
    value = action.type(text) if callable(action.type) else text
    if action.choices is not None and value not in action.choices:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(map(str, action.choices))}, got {text}")
    return value


def switch_tokens(parser, action, option, value):
    """Tokens for a flag that takes no value: true gives it, false leaves it off (or gives the
    flag that turns it off, such as --no-pin-mem)."""
    if not isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    if isinstance(action, argparse.BooleanOptionalAction):
        positive = action.option_strings[0]
        on = value != option.startswith("--no-")
        return [positive if on else "--no-" + positive[2:]]
    if value:
        return [option]
    wanted = not action.const
    if parser.get_default(action.dest) == wanted:
        return []
    for other in parser._actions:
        if other.dest == action.dest and other.nargs == 0 and other.const == wanted:
            return [other.option_strings[0]]
    raise argparse.ArgumentTypeError("false: this switch cannot be turned off; leave it out")


def as_text(action, value):
    """One command-line word for `value`; YAML reads on/off as booleans, so those map back."""
    if isinstance(value, bool):
        if action.choices and {"on", "off"} <= set(action.choices):
            return "on" if value else "off"
        raise argparse.ArgumentTypeError(f"expected a value, got {str(value).lower()}")
    if isinstance(value, list) and getattr(action.type, "metavar", "").startswith("N,"):
        return ",".join(str(v) for v in value)  # a width list given as a YAML list
    if not isinstance(value, (str, int, float)):
        what = "a list" if isinstance(value, list) else type(value).__name__
        raise argparse.ArgumentTypeError(f"expected one value, got {what}")
    return str(value)


def tokens_for(parser, action, option, value):
    """The command-line tokens of one key, each value checked by the flag's type."""
    if action.nargs == 0:
        return switch_tokens(parser, action, option, value)
    if value is None:
        raise argparse.ArgumentTypeError("no value given")
    if action.nargs in ("+", "*"):
        texts = [as_text(action, v) for v in (value if isinstance(value, list) else [value])]
        if action.nargs == "+" and not texts:
            raise argparse.ArgumentTypeError("expected at least one value")
    else:
        texts = [as_text(action, value)]
    for text in texts:
        check_value(action, text)
    if len(texts) == 1:
        return [f"{option}={texts[0]}"]  # '=' keeps a value such as -1 from reading as a flag
    return [option, *texts]


def file_tokens(parser, path):
    """The command-line tokens that give the flags of the file at `path`."""
    tokens, seen = [], {}
    for key, value in load(path).items():
        action = find_action(parser, path, key)
        if action.dest in seen:
            raise ConfigFileError(f"--config {path}: {key}: given twice (also as "
                                  f"{seen[action.dest]})")
        seen[action.dest] = key
        try:
            tokens += tokens_for(parser, action, "--" + key.lstrip("-"), value)
        except argparse.ArgumentTypeError as error:
            raise ConfigFileError(f"--config {path}: {key}: {error}") from None
    return tokens


def expand(parser, argv):
    """`argv` with the tokens of its --config file placed before it (the command line wins)."""
    path = config_path(argv)
    return argv if path is None else file_tokens(parser, path) + list(argv)


def run_values(args, given):
    """{flag: effective value} of the flags this run was given, ready for --config."""
    return {dest: getattr(args, dest) for dest in sorted(given - NOT_SAVED)
            if hasattr(args, dest)}


def run_yaml(args, given):
    """The text of run.yaml: the given flags (file and command line) at their effective values."""
    header = ("# The flags this run was given (its --config file and command line), with their\n"
              "# effective values; rerun with --config run.yaml. args.json holds every flag.\n")
    values = run_values(args, given)
    return header + (yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
                     if values else "{}\n")


def write_run_yaml(args, folder, write_text):
    """Writes run.yaml into `folder` with `write_text(path, text)`, when the parse recorded
    which flags were given (flags.parse_args sets args.given_flags)."""
    given = getattr(args, "given_flags", None)
    if given is not None:
        write_text(os.path.join(folder, "run.yaml"), run_yaml(args, set(given)))
