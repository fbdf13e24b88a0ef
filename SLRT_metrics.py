"""Scores for sign-language translation (SLT), continuous recognition (CSLR) and isolated
recognition (ISLR), in the conventions the published Uni-Sign / SLRT numbers use.

SLT: corpus BLEU-1..4 from sacrebleu and ROUGE-L as the `rouge` 1.0.1 package computes it.
CSLR: WER with the sclite / VAC python-evaluation alignment (insertion 3, deletion 3,
substitution 4), plus CTM/STM readers and writers; for PHOENIX, also the official WER, scored
after the datasets' own gloss rewriting (phoenix_wer.py holds the rules).
ISLR: top-1 accuracy per instance and per class.
Run as a script to score the `{phase}_tmp_pres.txt` / `{phase}_tmp_refs.txt` files the trainer
writes, plain one-sentence-per-line files, or STM/CTM files:

    python SLRT_metrics.py --task SLT --refs dev_tmp_refs.txt --hyps dev_tmp_pres.txt
    python SLRT_metrics.py --task CSLR --phoenix phoenix2014 --refs groundtruth-test.stm \
        --hyps output-hypothesis-test.ctm        # raw and official PHOENIX WER
"""
import argparse
import json
import os
import re
import sys
from itertools import chain, groupby

import numpy as np
from sacrebleu.metrics import BLEU

import cli
from phoenix_wer import (EMPTY_CTM_TOKEN, STM_END_TIME, VARIANTS as PHOENIX_VARIANTS,
                         clean_phoenix_hypothesis, clean_phoenix_reference, fold_case)

INS_COST, DEL_COST, SUB_COST = 3, 3, 4
CORRECT, SUBSTITUTION, DELETION, INSERTION = 0, 1, 2, 3
OP_LETTERS = 'CSDI'
TAGGED_LINE = re.compile(r'^sample: (.*?), (?:prediction|ground-truth): ?(.*)$')


# ----------------------------------------------------------------------------- text normalisation

def normalize_for_scoring(refs, hyps, level='word'):
    """Return (refs, hyps) ready for scoring.

    'word' leaves the text unchanged. 'char' is Uni-Sign's Chinese character-level scoring:
    hypotheses lose spaces and newlines, references get '，'->',' and '？'->'?' and lose spaces;
    both are then written as space-separated characters.
    """
    if level == 'word':
        return list(refs), list(hyps)
    if level != 'char':
        raise ValueError(f"level must be 'char' or 'word', got {level!r}")
    hyps = [' '.join(h.replace(' ', '').replace('\n', '')) for h in hyps]
    refs = [' '.join(r.replace('，', ',').replace('？', '?').replace(' ', '')) for r in refs]
    return refs, hyps


# ----------------------------------------------------------------------------- SLT

def bleu_1_to_4(references, hypotheses):
    """{'bleu1'..'bleu4'}: corpus BLEU with max n-gram order N (13a, mixed case, 'exp'), x100."""
    return {f'bleu{order}': BLEU(max_ngram_order=order).corpus_score(hypotheses, [references]).score
            for order in range(1, 5)}


def _rouge_sentences(text):
    """Split on '.' keeping non-empty pieces with squashed whitespace; a blank piece becomes ''
    and later the single word '' (the `rouge` package behaves the same way)."""
    return [' '.join(piece.split()) for piece in text.split('.') if piece]


def _lcs_words(ref_words, hyp_words):
    """Words of one longest common subsequence, traced back from the end; on a mismatch it steps
    back along the reference only when that keeps a strictly longer LCS."""
    rows, cols = len(ref_words), len(hyp_words)
    table = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            if ref_words[i - 1] == hyp_words[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    words, i, j = [], rows, cols
    while i > 0 and j > 0:
        if ref_words[i - 1] == hyp_words[j - 1]:
            words.append(ref_words[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l_pair(reference, hypothesis):
    """Summary-level ROUGE-L F of one pair in the `rouge` 1.0.1 convention, in [0, 1].

    Precision and recall divide the number of distinct words found in the union of the LCSs of
    every (reference sentence, hypothesis sentence) pair by the number of distinct hypothesis /
    reference words; F = 2PR / (P + R + 1e-8). A pair whose hypothesis or reference has no
    sentence at all (e.g. '' or '...') scores 0, where the package would raise.
    """
    ref_sentences = [s.split(' ') for s in _rouge_sentences(reference)]
    hyp_sentences = [s.split(' ') for s in _rouge_sentences(hypothesis)]
    if not ref_sentences or not hyp_sentences:
        return 0.0
    union = set()
    for ref_words in ref_sentences:
        for hyp_words in hyp_sentences:
            union.update(_lcs_words(ref_words, hyp_words))
    recall = len(union) / len(set(chain(*ref_sentences)))
    precision = len(union) / len(set(chain(*hyp_sentences)))
    return 2.0 * precision * recall / (precision + recall + 1e-8)


def rouge_l(references, hypotheses):
    """Mean `rouge`-1.0.1-style ROUGE-L F over pairs, x100 (the 'rouge' SLT papers report)."""
    if not hypotheses:
        return 0.0
    return 100.0 * float(np.mean([rouge_l_pair(r, h) for r, h in zip(references, hypotheses)]))


class _WhitespaceTokenizer:
    """rouge-score's default tokenizer keeps only [a-z0-9]; splitting on whitespace keeps
    Chinese characters and case."""

    def tokenize(self, text):
        return text.split()


def rouge_score_l(references, hypotheses):
    """Mean sentence-level ROUGE-L F1 from the rouge-score package (whitespace tokens), x100."""
    from rouge_score import rouge_scorer  # imports nltk (~0.7 s), so only when needed
    if not hypotheses:
        return 0.0
    scorer = rouge_scorer.RougeScorer(['rougeL'], tokenizer=_WhitespaceTokenizer())
    scores = [scorer.score(r, h)['rougeL'].fmeasure for r, h in zip(references, hypotheses)]
    return 100.0 * float(np.mean(scores))


def translation_performance(txt_ref, txt_hyp):
    """(bleu dict with 'bleu1'..'bleu4', rouge-L) for already normalised text, all x100."""
    return bleu_1_to_4(txt_ref, txt_hyp), rouge_l(txt_ref, txt_hyp)


# ----------------------------------------------------------------------------- CSLR

def _glosses(text_or_glosses):
    return text_or_glosses.split() if isinstance(text_or_glosses, str) else list(text_or_glosses)


def merge_repeats(glosses):
    """Collapse runs of the same gloss: A A B A -> A B A."""
    return [gloss for gloss, _ in groupby(glosses)]


def _backpointers(ref, hyp):
    """Back-pointer table of the minimum-cost alignment. Ties pick, as VAC does: correct on a
    match, otherwise substitution, then deletion, then insertion."""
    vocab = {gloss: index for index, gloss in enumerate(dict.fromkeys(ref + hyp))}
    ref_ids = np.array([vocab[g] for g in ref], dtype=np.int64)
    hyp_ids = np.array([vocab[g] for g in hyp], dtype=np.int64)
    ramp = np.arange(len(hyp) + 1) * INS_COST
    pointers = np.full((len(ref) + 1, len(hyp) + 1), INSERTION, dtype=np.int8)
    pointers[1:, 0] = DELETION
    previous = ramp
    for i in range(1, len(ref) + 1):
        match = ref_ids[i - 1] == hyp_ids
        diagonal = previous[:-1] + np.where(match, 0, SUB_COST)
        up = previous[1:] + DEL_COST
        without_left = np.where(match, diagonal, np.minimum(diagonal, up))
        # row[j] = min(without_left[j], row[j-1] + INS_COST), solved with a running minimum
        candidates = np.concatenate(([i * DEL_COST], without_left))
        row = np.minimum.accumulate(candidates - ramp) + ramp
        pointers[i, 1:] = np.select([match, row[1:] == diagonal, row[1:] == up],
                                    [CORRECT, SUBSTITUTION, DELETION], INSERTION)
        previous = row
    return pointers


def align(reference, hypothesis):
    """Edit operations ('C', 'S', 'D', 'I') aligning two gloss sequences, in order."""
    ref, hyp = _glosses(reference), _glosses(hypothesis)
    pointers = _backpointers(ref, hyp)
    i, j, ops = len(ref), len(hyp), []
    while i > 0 and j > 0:
        op = pointers[i, j]
        ops.append(op)
        i -= op != INSERTION
        j -= op != DELETION
    ops += [DELETION] * i + [INSERTION] * j
    return [OP_LETTERS[op] for op in reversed(ops)]


def wer_single(reference, hypothesis, merge_same=False):
    """Error counts of one sentence: num_ref, num_sub, num_del, num_ins, num_err."""
    ref, hyp = _glosses(reference), _glosses(hypothesis)
    if merge_same:
        hyp = merge_repeats(hyp)
    ops = align(ref, hyp)
    counts = {f'num_{name}': ops.count(letter) for name, letter in
              (('sub', 'S'), ('del', 'D'), ('ins', 'I'))}
    counts['num_err'] = sum(counts.values())
    counts['num_ref'] = len(ref)
    return counts


def wer_list(references, hypotheses, merge_same=False):
    """Corpus WER and substitution / deletion / insertion rates, percent of reference glosses.

    Inputs are space-separated gloss strings (or gloss lists). With no reference glosses at all
    the rates are divided by 1 instead.
    """
    totals = {'num_err': 0, 'num_sub': 0, 'num_del': 0, 'num_ins': 0, 'num_ref': 0}
    for reference, hypothesis in zip(references, hypotheses):
        for key, value in wer_single(reference, hypothesis, merge_same).items():
            totals[key] += value
    scale = 100.0 / max(totals['num_ref'], 1)
    return {'wer': totals['num_err'] * scale, 'sub_rate': totals['num_sub'] * scale,
            'del_rate': totals['num_del'] * scale, 'ins_rate': totals['num_ins'] * scale}


def official_wer(references, hypotheses, variant='phoenix2014', case_sensitive=False):
    """`wer_list` after the official PHOENIX rewriting of both sides (phoenix_wer.VARIANTS).

    Returns {'wer', 'sub_rate', 'del_rate', 'ins_rate'} in percent of the rewritten reference
    glosses. An emptied hypothesis is the single word `[EMPTY]`; glosses are compared
    case-insensitively, as sclite does unless run with -s (`case_sensitive=True`).
    """
    refs = [clean_phoenix_reference(r, variant) for r in references]
    hyps = [clean_phoenix_hypothesis(h, variant) for h in hypotheses]
    if not case_sensitive:
        refs, hyps = [fold_case(r) for r in refs], [fold_case(h) for h in hyps]
    return wer_list(refs, hyps)


def write_ctm(path, ids, hypotheses):
    """Hypothesis CTM, one `ID 1 START DURATION GLOSS` line per gloss, timed as VAC writes it
    (i/100 and (i+1)/100). An empty hypothesis gets one [EMPTY] line, as PHOENIX's
    preprocessing adds, so every utterance is present."""
    with open(path, 'w', encoding='utf-8') as handle:
        for sample_id, hypothesis in zip(ids, hypotheses):
            glosses = _glosses(hypothesis) or [EMPTY_CTM_TOKEN]
            for index, gloss in enumerate(glosses):
                handle.write(f'{sample_id} 1 {index / 100:.2f} {(index + 1) / 100:.2f} {gloss}\n')


def write_stm(path, ids, references, signer='signer'):
    """Reference STM, `ID 1 SIGNER 0.0 1.79769e+308 GLOSS ...`; signer is one name or a list."""
    signers = [signer] * len(ids) if isinstance(signer, str) else list(signer)
    with open(path, 'w', encoding='utf-8') as handle:
        for sample_id, reference, who in zip(ids, references, signers):
            fields = [sample_id, '1', who, '0.0', STM_END_TIME] + _glosses(reference)
            handle.write(' '.join(fields) + '\n')


def read_stm(path):
    """dict id -> reference glosses (';;' comment lines are skipped)."""
    references = {}
    with open(path, encoding='utf-8') as handle:
        for line in handle:
            fields = line.split()
            if fields and not fields[0].startswith(';;'):
                references[fields[0]] = fields[5:]
    return references


def read_ctm(path):
    """dict id -> hypothesis glosses ordered by start time; [EMPTY] marks an empty hypothesis."""
    timed = {}
    with open(path, encoding='utf-8') as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 5 and not fields[0].startswith(';;'):
                timed.setdefault(fields[0], []).append((float(fields[2]), fields[4]))
    return {sample_id: [g for _, g in sorted(entries, key=lambda e: e[0]) if g != EMPTY_CTM_TOKEN]
            for sample_id, entries in timed.items()}


# ----------------------------------------------------------------------------- ISLR

def islr_performance(txt_ref, txt_hyp):
    """(per-instance, per-class mean) top-1 accuracy in percent; exact string match."""
    if not txt_ref:
        return 0.0, 0.0
    hits_by_class = {}
    for reference, hypothesis in zip(txt_ref, txt_hyp):
        hits_by_class.setdefault(reference, []).append(reference == hypothesis)
    per_instance = 100.0 * float(np.mean(list(chain(*hits_by_class.values()))))
    per_class = 100.0 * float(np.mean([np.mean(hits) for hits in hits_by_class.values()]))
    return per_instance, per_class


# ----------------------------------------------------------------------------- files and CLI

def read_prediction_file(path):
    """(names, texts) from a trainer file (`sample: NAME, prediction: TEXT` or
    `sample: NAME, ground-truth: TEXT`) or, when the first line is not tagged, a plain file with
    one sentence per line (names are then None). An untagged line inside a tagged file continues
    the previous text after a newline."""
    with open(path, encoding='utf-8') as handle:
        lines = handle.read().splitlines()
    if not lines or not TAGGED_LINE.match(lines[0]):
        return None, lines
    names, texts = [], []
    for line in lines:
        tagged = TAGGED_LINE.match(line)
        if tagged:
            names.append(tagged.group(1))
            texts.append(tagged.group(2))
        else:
            texts[-1] += '\n' + line
    return names, texts


def _read_any(path):
    """(names or None, texts) from a trainer / plain text file, an STM or a CTM file."""
    path = str(path)
    if path.endswith(('.stm', '.ctm')):
        by_id = read_stm(path) if path.endswith('.stm') else read_ctm(path)
        return list(by_id), [' '.join(glosses) for glosses in by_id.values()]
    return read_prediction_file(path)


def load_pairs(refs_path, hyps_path):
    """(refs, hyps) paired by sample name when both files name samples, else line by line.
    A named reference with no hypothesis is scored against an empty hypothesis."""
    ref_names, refs = _read_any(refs_path)
    hyp_names, hyps = _read_any(hyps_path)
    if ref_names is None or hyp_names is None:
        if len(refs) != len(hyps):
            raise ValueError(f'{len(refs)} references but {len(hyps)} hypotheses')
        return refs, hyps
    by_name = dict(zip(hyp_names, hyps))
    missing = [name for name in ref_names if name not in by_name]
    if missing:
        print(f'{len(missing)} references have no hypothesis, scored as empty', file=sys.stderr)
    return refs, [by_name.get(name, '') for name in ref_names]


def score(refs, hyps, task='SLT', level='word', merge_same=False, phoenix=None,
          case_sensitive=False):
    """All metrics of a task as a flat dict, after normalize_for_scoring. For CSLR, `phoenix`
    (a phoenix_wer.VARIANTS name) adds the official WER as `official_wer`, `official_sub_rate`,
    ... beside the raw `wer`."""
    if phoenix is not None and task != 'CSLR':
        raise ValueError(f'the official PHOENIX WER scores glosses (CSLR), not {task}')
    refs, hyps = normalize_for_scoring(refs, hyps, level)
    if task == 'SLT':
        bleu, rouge = translation_performance(refs, hyps)
        return {**bleu, 'rouge': rouge, 'rougeL_rouge_score': rouge_score_l(refs, hyps)}
    if task == 'CSLR':
        if merge_same:
            hyps = [merge_repeats(_glosses(hyp)) for hyp in hyps]
        results = wer_list(refs, hyps)
        if phoenix is not None:
            official = official_wer(refs, hyps, phoenix, case_sensitive)
            results.update({f'official_{key}': value for key, value in official.items()})
        return results
    if task == 'ISLR':
        per_instance, per_class = islr_performance(refs, hyps)
        return {'top1_acc_pi': per_instance, 'top1_acc_pc': per_class}
    raise ValueError(f'unknown task {task!r}')


def format_table(results):
    width = max(len(name) for name in results)
    return '\n'.join(f'{name:<{width}}  {value:8.2f}' for name, value in results.items())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_flag(parser, '--refs', required=True, help='references: trainer, plain or .stm file')
    cli.add_flag(parser, '--hyps', required=True, help='hypotheses: trainer, plain or .ctm file')
    cli.add_flag(parser, '--level', choices=['word', 'char'], default='word')
    cli.add_flag(parser, '--task', choices=['SLT', 'CSLR', 'ISLR'], default='SLT')
    cli.add_flag(parser, '--merge-same', action='store_true',
                 help='CSLR: merge repeated consecutive hypothesis glosses first')
    cli.add_flag(parser, '--phoenix', choices=PHOENIX_VARIANTS, default=None,
                 help='CSLR: also the official WER after this PHOENIX rewriting (phoenix2014: '
                      'preprocess.sh; phoenix2014t: the PHOENIX-2014-T release script)')
    cli.add_flag(parser, '--case-sensitive', action='store_true',
                 help='with --phoenix: compare glosses case-sensitively (sclite -s)')
    args = parser.parse_args(argv)
    if args.phoenix and args.task != 'CSLR':
        parser.error(f'--phoenix scores glosses: it needs --task CSLR, not {args.task}')
    if args.case_sensitive and not args.phoenix:
        parser.error('--case-sensitive acts on the official PHOENIX WER only: add --phoenix')
    return args


def main(argv=None):
    args = parse_args(argv)
    for flag, path in (('--refs', args.refs), ('--hyps', args.hyps)):
        if not os.path.isfile(path):
            sys.exit(f'SLRT_metrics.py: error: {flag} {path} does not exist')
    try:
        refs, hyps = load_pairs(args.refs, args.hyps)
    except (ValueError, UnicodeDecodeError) as error:
        sys.exit(f'SLRT_metrics.py: error: {args.refs} and {args.hyps}: {error}')
    results = score(refs, hyps, args.task, args.level, args.merge_same, args.phoenix,
                    args.case_sensitive)
    print(f'{args.task} on {len(refs)} samples'
          + (f' (official WER: {args.phoenix} rewriting)' if args.phoenix else ''))
    print(format_table(results))
    print(json.dumps({'task': args.task, 'num_samples': len(refs), **results}))
    return results


if __name__ == '__main__':
    main()
