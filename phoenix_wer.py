"""Official PHOENIX WER: the gloss rewriting of the datasets' own evaluation scripts, then the
format facts of the CTM and STM files it reads.

Published PHOENIX WERs are not computed on raw model output. The evaluation shipped with
PHOENIX-2014 (`evaluatePhoenix2014.sh`, split out by VAC as `preprocess.sh` + `mergectmstm.py`)
rewrites every line of the hypothesis CTM with sed, perl, grep and awk before sclite scores it
against the ground-truth STM, which it only sorts. The PHOENIX-2014-T release's script
(`evaluation/sign-recognition/evaluatePHOENIX-2014-T-signrecognition.sh`) rewrites the
hypothesis CTM with a shorter rule set and also rewrites the reference STM.

Two facts shape what those rules really do:

* A CTM holds one gloss per line (`ID 1 START END GLOSS`), so every rule is applied to one gloss
  at a time. Rules that look at two neighbouring words (joining spelled letters, `WIE AUSSEHEN`,
  merging repeated words) never fire on hypotheses; they only act on the STM references of
  PHOENIX-2014-T, where a whole sentence sits on one line.
* An utterance whose glosses are all removed gets the single word `[EMPTY]` (by the awk step or
  by `mergectmstm.py`), and sclite scores it as an ordinary word.

sclite also compares words case-insensitively unless given `-s`; `official_wer` does the same.
Variants: 'phoenix2014' (PHOENIX-2014's rules, which code bases derived from VAC, CorrNet for
one, also apply to PHOENIX-2014-T) and 'phoenix2014t' (the PHOENIX-2014-T release's own script).

`SLRT_metrics.official_wer` scores with these rules; on the command line,
`python SLRT_metrics.py --task CSLR --phoenix phoenix2014 --refs REFS --hyps HYPS`.
"""
import re
from itertools import groupby

EMPTY_CTM_TOKEN = '[EMPTY]'  # the word written for an utterance left without glosses
STM_END_TIME = '1.79769e+308'  # the end time of a whole-utterance STM line
VARIANTS = ('phoenix2014', 'phoenix2014t')
_ASCII_UPPER = str.maketrans('abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ')
_CTM_HEAD = 'id 1 0.00 0.01'
_STM_HEAD = f'id 1 signer 0.0 {STM_END_TIME}'
_REPEATED_WORD = r'(?<![\w-])(\b[A-Z]+(?![\w-])) \1(?![\w-])'


def _sub(pattern, replacement, count=0):
    """A rewriting step: replace matches of `pattern` (ASCII classes, like sed in the C locale)."""
    return re.compile(pattern, re.ASCII), replacement, count


def _drop(pattern):
    """A filtering step: the whole line disappears when `pattern` is found in it."""
    return re.compile(pattern, re.ASCII), None, 0


_LETTER_JOINS = [
    _sub(r'^([A-Z]) ([A-Z][+ ])', r'\1+\2'),
    _sub(r'[ +]([A-Z]) ([A-Z]) ', r' \1+\2 '),
    _sub(r'([ +][A-Z]) ([A-Z][ +])', r'\1+\2'),
    _sub(r'([ +][A-Z]) ([A-Z][ +])', r'\1+\2'),
    _sub(r'([ +][A-Z]) ([A-Z][ +])', r'\1+\2'),
    _sub(r'([ +]SCH) ([A-Z][ +])', r'\1+\2'),
    _sub(r'([ +]NN) ([A-Z][ +])', r'\1+\2'),
    _sub(r'([ +][A-Z]) (NN[ +])', r'\1+\2'),
    _sub(r'([ +][A-Z]) ([A-Z])$', r'\1+\2'),
]
_MERGE_REPEATS = [_sub(_REPEATED_WORD, r'\1')] * 4

PHOENIX2014_HYPOTHESIS_STEPS = [
    _sub('loc-', ''), _sub('cl-', ''), _sub('qu-', ''), _sub('poss-', ''), _sub('lh-', ''),
    _sub('S0NNE', 'SONNE'), _sub('HABEN2', 'HABEN'),
    _sub('__EMOTION__', ''), _sub('__PU__', ''), _sub('__LEFTHAND__', ''),
    _sub('WIE AUSSEHEN', 'WIE-AUSSEHEN'),
    _sub('ZEIGEN ', 'ZEIGEN-BILDSCHIRM '), _sub('ZEIGEN$', 'ZEIGEN-BILDSCHIRM', count=1),
    *_LETTER_JOINS,
    _sub(r'([A-Z][A-Z])RAUM', r'\1'), _sub('-PLUSPLUS', ''),
    *_MERGE_REPEATS,
    _drop('__LEFTHAND__'), _drop('__EPENTHESIS__'), _drop('__EMOTION__'),
]

PHOENIX2014T_HYPOTHESIS_STEPS = [
    _drop('__LEFTHAND__'), _drop('__EPENTHESIS__'), _drop('__EMOTION__'), _drop(r' __[^_ ]*__$'),
    _sub(r' loc-([^ ]*)$', r' \1'), _sub('-PLUSPLUS$', ''), _sub(r' cl-([^ ]*)$', r' \1'),
    _sub(r'\b([A-Z][A-Z]*)RAUM$', r'\1'),
]

PHOENIX2014T_REFERENCE_STEPS = [
    _sub('__LEFTHAND__ ', ''), _sub(' __LEFTHAND__', ''),
    _sub(' __EPENTHESIS__', ''), _sub('__EPENTHESIS__ ', ''),
    _sub(' __EMOTION__', ''), _sub('__EMOTION__ ', ''),
    _sub(r'\b__[^_ ]*__\b', ''), _sub(r'\bloc-([^ ]*)\b', r'\1'), _sub(r'\bcl-([^ ]*)\b', r'\1'),
    _sub(r'\b([^ ]*)-PLUSPLUS\b', r'\1'), _sub(r'\b([A-Z][A-Z]*)RAUM\b', r'\1'),
    _sub('WIE AUSSEHEN', 'WIE-AUSSEHEN'),
    *_LETTER_JOINS,
    *_MERGE_REPEATS,
]


def _gloss_list(text_or_glosses):
    """Glosses of a space-separated string or of a list (whose items may hold spaces)."""
    if isinstance(text_or_glosses, str):
        return text_or_glosses.split()
    return ' '.join(text_or_glosses).split()


def _check_variant(variant):
    if variant not in VARIANTS:
        raise ValueError(f'variant must be one of {VARIANTS}, got {variant!r}')


def apply_steps(line, steps):
    """Run rewriting and filtering steps over one line, in order; None once a filter drops it."""
    for pattern, replacement, count in steps:
        if replacement is None:
            if pattern.search(line):
                return None
        else:
            line = pattern.sub(replacement, line, count=count)
    return line


def clean_phoenix_gloss(gloss, variant='phoenix2014'):
    """What the official hypothesis rewriting leaves of one gloss: a list of zero or one gloss.
    The gloss is rewritten on a CTM line of its own, behind the id, channel and times, since
    several rules are anchored on the space in front of it."""
    _check_variant(variant)
    steps = {'phoenix2014': PHOENIX2014_HYPOTHESIS_STEPS,
             'phoenix2014t': PHOENIX2014T_HYPOTHESIS_STEPS}[variant]
    line = apply_steps(f'{_CTM_HEAD} {gloss}', steps)
    return [] if line is None else line.split()[4:]


def clean_phoenix_hypothesis(text, variant='phoenix2014'):
    """A hypothesis (gloss string or list) as the official evaluation rewrites it, as a string.

    'phoenix2014' (`preprocess.sh`), on each gloss in this order:
      1. the substrings `loc-`, `cl-`, `qu-`, `poss-`, `lh-` are deleted wherever they occur,
         each prefix in its own pass over the gloss, in that order (so `lloc-h-A` ends as `A`);
      2. `S0NNE` (with a zero) becomes `SONNE`, then `HABEN2` becomes `HABEN`;
      3. the substrings `__EMOTION__`, `__PU__`, `__LEFTHAND__` are deleted, in that order;
      4. `WIE AUSSEHEN` -> `WIE-AUSSEHEN` and `ZEIGEN ` -> `ZEIGEN-BILDSCHIRM ` need a second
         word on the line and never fire; a gloss ending in `ZEIGEN` gets `-BILDSCHIRM`;
      5. the joins of spelled letters (`A B` -> `A+B`, also around `SCH` and `NN`) need two
         words on one line as well and never fire;
      6. `RAUM` directly after two capital letters is deleted (`NORDRAUM` -> `NORD`);
      7. every `-PLUSPLUS` is deleted (after step 4: `ZEIGEN-PLUSPLUS` ends as plain `ZEIGEN`);
         the four passes merging a repeated word follow and, for the same reason, never fire;
      8. a gloss still containing `__LEFTHAND__`, `__EPENTHESIS__` or `__EMOTION__` is dropped
         (`__EPENTHESIS__` is only ever dropped here; step 3 can also build these words, as in
         `__EMO__PU__TION__`);
      9. trailing white space is removed and a gloss left empty is dropped.
    `__ON__`, `__OFF__` and any other `__WORD__` not named above are kept, as in the references.

    'phoenix2014t' (the PHOENIX-2014-T release's script), on each gloss in this order:
      1. a gloss containing `__LEFTHAND__`, `__EPENTHESIS__` or `__EMOTION__` is dropped, then
         any gloss of the form `__WORD__` (no `_` inside: `__ON__`, `__OFF__`, `__PU__`);
      2. one leading `loc-` is deleted, then one trailing `-PLUSPLUS`, then one leading `cl-`;
      3. a trailing `RAUM` is deleted after capital letters that start the gloss or follow a
         non-word character;
      4. a gloss left empty is dropped; then consecutive equal glosses are merged.

    With every gloss dropped the result is `[EMPTY]`, the word the official pipeline writes for
    such an utterance, which sclite scores like any other word.
    """
    _check_variant(variant)
    glosses = []
    for gloss in _gloss_list(text):
        glosses += clean_phoenix_gloss(gloss, variant)
    if variant == 'phoenix2014t':
        glosses = [gloss for gloss, _ in groupby(glosses)]
    return ' '.join(glosses) or EMPTY_CTM_TOKEN


def clean_phoenix_reference(text, variant='phoenix2014'):
    """A reference (gloss string or list) as the official evaluation scores it, as a string.

    'phoenix2014': unchanged (the STM is only sorted; its glosses are already clean).
    'phoenix2014t': the whole sentence is one STM line, rewritten in this order:
      1. `__LEFTHAND__`, `__EPENTHESIS__` and `__EMOTION__` are deleted with one neighbouring
         space (first `__LEFTHAND__ ` then ` __LEFTHAND__`, then ` __EPENTHESIS__`,
         `__EPENTHESIS__ `, ` __EMOTION__`, `__EMOTION__ `), which can glue two glosses;
      2. pieces `__WORD__` (no `_` inside) between non-word characters are deleted;
      3. `loc-`, then `cl-`, is deleted at the start of a word piece (also after a hyphen)
         when a letter, digit or `_` follows later in the word (`loc-` alone stays);
      4. a `-PLUSPLUS` followed by a non-word character or the word's end is deleted when a
         word character comes earlier in the word (of several, only the last); then a `RAUM`
         ending a word piece of capital letters;
      5. `WIE AUSSEHEN` becomes `WIE-AUSSEHEN`;
      6. spelled letters are joined with `+`: `X Y ` after a space or `+`, three passes of
         `X Y` between spaces or `+`, then around `SCH` and `NN`, then a final `X Y`;
      7. four passes merge a word of capital letters repeated right after itself.
    The rules run on the STM line, header included: text that step 1 glues onto the end time
    in front of the first gloss is lost, since sclite reads that field as a number.
    """
    glosses = _gloss_list(text)
    _check_variant(variant)
    if variant == 'phoenix2014':
        return ' '.join(glosses)
    line = apply_steps(f"{_STM_HEAD} {' '.join(glosses)}", PHOENIX2014T_REFERENCE_STEPS)
    return ' '.join(line.split()[5:])


def fold_case(text):
    """ASCII letters in upper case: sclite aligns case-insensitively unless run with -s."""
    return text.translate(_ASCII_UPPER)
