"""Tests for SLRT_metrics: BLEU/ROUGE conventions, sclite-style WER, CTM/STM files, ISLR, CLI."""
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import SLRT_metrics as M  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- normalisation

def test_char_level_normalisation_follows_uni_sign():
    refs, hyps = M.normalize_for_scoring(['你好，世界？ 好'], ['你好 世界\n'], 'char')
    assert refs == ['你 好 , 世 界 ? 好']
    assert hyps == ['你 好 世 界']


def test_char_level_normalisation_is_idempotent():
    refs, hyps = M.normalize_for_scoring(['今天，下雨？'], ['今天 下雨'], level='char')
    assert M.normalize_for_scoring(refs, hyps, level='char') == (refs, hyps)


def test_word_level_leaves_text_alone_and_bad_level_raises():
    assert M.normalize_for_scoring(['A b，'], ['x  y'], 'word') == (['A b，'], ['x  y'])
    with pytest.raises(ValueError):
        M.normalize_for_scoring([], [], 'bpe')


# ----------------------------------------------------------------------------- BLEU

def test_identical_corpora_score_100():
    corpus = ['the cat sat on the mat .', 'hello world , how are you ?', 'a b c d e']
    bleu, rouge = M.translation_performance(corpus, corpus)
    for order in range(1, 5):
        assert bleu[f'bleu{order}'] == pytest.approx(100.0)
    assert rouge == pytest.approx(100.0, abs=1e-5)
    assert M.rouge_score_l(corpus, corpus) == pytest.approx(100.0)


def test_bleu_n_is_cumulative_bleu_with_brevity_penalty():
    bleu = M.bleu_1_to_4(['the cat sat on the mat'], ['the cat sat on mat'])
    brevity = math.exp(1 - 6 / 5)
    assert bleu['bleu1'] == pytest.approx(100 * brevity)
    assert bleu['bleu2'] == pytest.approx(100 * brevity * math.sqrt(3 / 4))
    assert bleu['bleu3'] == pytest.approx(100 * brevity * (3 / 4 * 2 / 3) ** (1 / 3))


def test_one_word_hypothesis_bleu1():
    bleu = M.bleu_1_to_4(['the cat sat on the mat'], ['the'])
    assert bleu['bleu1'] == pytest.approx(100 * math.exp(1 - 6))


def test_empty_hypothesis_scores_zero():
    bleu, rouge = M.translation_performance(['the cat sat'], [''])
    assert all(value == 0.0 for value in bleu.values())
    assert rouge == 0.0
    assert M.rouge_score_l(['the cat sat'], ['']) == 0.0


# ----------------------------------------------------------------------------- ROUGE-L

def test_rouge_counts_distinct_words():
    # distinct words: reference {a, b}, hypothesis {a}; LCS words {a} -> R 1/2, P 1
    assert M.rouge_l(['a a b'], ['a a']) == pytest.approx(100 * 2 / 3, abs=1e-5)
    # rouge-score counts tokens: LCS 2, P 1, R 2/3
    assert M.rouge_score_l(['a a b'], ['a a']) == pytest.approx(80.0)


def test_rouge_splits_sentences_on_period_and_unions_lcs():
    # LCS(a b | a c) = a, LCS(c d | a c) = c -> union 2 of 4 reference words, 2 of 2 hyp words
    assert M.rouge_l_pair('a b. c d', 'a c') == pytest.approx(2 / 3, abs=1e-7)


def test_rouge_unicode_and_punctuation():
    refs, hyps = M.normalize_for_scoring(['你好，世界？'], ['你好 世界'], level='char')
    # reference words 你 好 , 世 界 ? (6), hypothesis 4, all 4 in the LCS: R 2/3, P 1
    assert M.rouge_l(refs, hyps) == pytest.approx(80.0, abs=1e-5)


def test_rouge_empty_reference_or_hypothesis_pair_is_zero_and_still_averaged():
    assert M.rouge_l_pair('', 'a b') == 0.0
    assert M.rouge_l_pair('a b', '...') == 0.0
    assert M.rouge_l(['', 'a b'], ['a b', 'a b']) == pytest.approx(50.0, abs=1e-5)


def test_rouge_one_word_hypothesis():
    # R 1/3, P 1 -> F = 2 * (1/3) / (4/3) = 1/2
    assert M.rouge_l(['x y z'], ['y']) == pytest.approx(50.0, abs=1e-5)


def _random_text(rng):
    pieces = ['a', 'b', 'c', 'the', 'Cat', 'cat', '.', ' . ', '猫', '，', '?', 'dog', '  ']
    return ' '.join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))


def test_rouge_matches_rouge_package_on_random_corpora():
    rouge_package = pytest.importorskip('rouge')
    rng = random.Random(0)
    compared = 0
    for _ in range(300):
        refs = [_random_text(rng) for _ in range(4)]
        hyps = [_random_text(rng) for _ in range(4)]
        try:
            expected = rouge_package.Rouge().get_scores(hyps, refs, avg=True)['rouge-l']['f'] * 100
        except ValueError:  # the package raises on pairs without sentences
            continue
        assert M.rouge_l(refs, hyps) == pytest.approx(expected, abs=1e-9)
        compared += 1
    assert compared > 250


# ----------------------------------------------------------------------------- WER

def test_wer_prefers_deletion_plus_insertion_over_two_substitutions():
    assert M.align('A B', 'B C') == ['D', 'C', 'I']
    assert M.wer_list(['A B'], ['B C']) == pytest.approx(
        {'wer': 100.0, 'sub_rate': 0.0, 'del_rate': 50.0, 'ins_rate': 50.0})


def test_wer_weights_can_cost_more_errors_than_levenshtein():
    # five substitutions (cost 20) lose to three deletions and three insertions (cost 18)
    assert M.align('A A A B B', 'B B C C A') == ['D', 'D', 'D', 'C', 'C', 'I', 'I', 'I']
    assert M.wer_list(['A A A B B'], ['B B C C A'])['wer'] == pytest.approx(120.0)


def test_wer_ties_prefer_substitution_then_deletion_then_insertion():
    # cost 15 either way; the back-pointer at the last cell prefers a deletion over an insertion
    result = M.wer_single('A B B A', 'C C C A B')
    assert M.align('A B B A', 'C C C A B') == ['I', 'I', 'I', 'C', 'D', 'C', 'D']
    assert (result['num_sub'], result['num_del'], result['num_ins']) == (0, 2, 3)


def test_wer_simple_counts_and_empty_hypothesis():
    assert M.wer_list(['A B C D'], ['A X C D E']) == pytest.approx(
        {'wer': 50.0, 'sub_rate': 25.0, 'del_rate': 0.0, 'ins_rate': 25.0})
    assert M.wer_list(['A B C', 'D'], ['', 'D']) == pytest.approx(
        {'wer': 75.0, 'sub_rate': 0.0, 'del_rate': 75.0, 'ins_rate': 0.0})
    assert M.wer_list(['A B'], ['A B'])['wer'] == 0.0


def test_wer_merge_same_collapses_repeated_hypothesis_glosses():
    assert M.merge_repeats(['A', 'A', 'B', 'A', 'A']) == ['A', 'B', 'A']
    assert M.wer_list(['A B C'], ['A A B B C'])['ins_rate'] == pytest.approx(200 / 3)
    assert M.wer_list(['A B C'], ['A A B B C'], merge_same=True)['wer'] == 0.0


def test_wer_accepts_gloss_lists_and_unicode():
    assert M.wer_list([['你', '好']], [['你', '们']])['sub_rate'] == pytest.approx(50.0)


# ----------------------------------------------------------------------------- CTM / STM

def test_ctm_stm_round_trip(tmp_path):
    ids = ['clip-1', 'clip-2', 'clip-3']
    refs = ['__ON__ HEUTE REGEN', 'NORD WIND', 'SONNE']
    hyps = ['HEUTE REGEN REGEN', '', 'SONNE MORGEN']
    M.write_stm(tmp_path / 'ref.stm', ids, refs, signer='signer05')
    M.write_ctm(tmp_path / 'hyp.ctm', ids, hyps)
    stm_lines = (tmp_path / 'ref.stm').read_text().splitlines()
    assert stm_lines[0] == 'clip-1 1 signer05 0.0 1.79769e+308 __ON__ HEUTE REGEN'
    ctm_lines = (tmp_path / 'hyp.ctm').read_text().splitlines()
    assert ctm_lines[:2] == ['clip-1 1 0.00 0.01 HEUTE', 'clip-1 1 0.01 0.02 REGEN']
    assert 'clip-2 1 0.00 0.01 [EMPTY]' in ctm_lines
    assert M.read_stm(tmp_path / 'ref.stm') == {i: r.split() for i, r in zip(ids, refs)}
    assert M.read_ctm(tmp_path / 'hyp.ctm') == {i: h.split() for i, h in zip(ids, hyps)}


def test_read_ctm_orders_by_start_time(tmp_path):
    path = tmp_path / 'shuffled.ctm'
    path.write_text('x 1 0.10 0.01 C\nx 1 0.02 0.01 B\nx 1 0.00 0.01 A 0.9\ny 1 0.00 0.01 Z\n')
    assert M.read_ctm(path) == {'x': ['A', 'B', 'C'], 'y': ['Z']}


def test_write_stm_accepts_one_signer_per_line(tmp_path):
    M.write_stm(tmp_path / 'ref.stm', ['a', 'b'], ['X', ''], signer=['s1', 's2'])
    assert (tmp_path / 'ref.stm').read_text().splitlines() == [
        'a 1 s1 0.0 1.79769e+308 X', 'b 1 s2 0.0 1.79769e+308']


# ----------------------------------------------------------------------------- ISLR

def test_islr_per_instance_and_per_class():
    refs = ['hello', 'hello', 'hello', 'bye']
    hyps = ['hello', 'hello', 'yes', 'no']
    per_instance, per_class = M.islr_performance(refs, hyps)
    assert per_instance == pytest.approx(50.0)
    assert per_class == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert M.islr_performance([], []) == (0.0, 0.0)


# ----------------------------------------------------------------------------- files and CLI

def _run_cli(*args):
    completed = subprocess.run([sys.executable, str(REPO_ROOT / 'SLRT_metrics.py'), *args],
                               capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_read_prediction_file_tagged_and_plain(tmp_path):
    tagged = tmp_path / 'dev_tmp_pres.txt'
    tagged.write_text('sample: a/1, prediction: hello, world\nsecond line\n'
                      'sample: b/2, prediction: \n')
    assert M.read_prediction_file(tagged) == (['a/1', 'b/2'], ['hello, world\nsecond line', ''])
    plain = tmp_path / 'plain.txt'
    plain.write_text('one sentence\n\nthird\n')
    assert M.read_prediction_file(plain) == (None, ['one sentence', '', 'third'])


def test_cli_slt_pairs_trainer_files_by_sample_name(tmp_path):
    (tmp_path / 'dev_tmp_refs.txt').write_text(
        'sample: s1, ground-truth: the cat sat on the mat\nsample: s2, ground-truth: hello there\n')
    (tmp_path / 'dev_tmp_pres.txt').write_text(
        'sample: s2, prediction: hello there\nsample: s1, prediction: the cat sat on the mat\n')
    result = _run_cli('--refs', str(tmp_path / 'dev_tmp_refs.txt'),
                      '--hyps', str(tmp_path / 'dev_tmp_pres.txt'))
    assert result['num_samples'] == 2
    assert result['bleu4'] == pytest.approx(100.0)
    assert result['rouge'] == pytest.approx(100.0, abs=1e-5)
    assert result['rougeL_rouge_score'] == pytest.approx(100.0)


def test_cli_char_level_on_plain_files(tmp_path):
    (tmp_path / 'refs.txt').write_text('你好，世界？\n')
    (tmp_path / 'hyps.txt').write_text('你好 世界\n')
    result = _run_cli('--refs', str(tmp_path / 'refs.txt'), '--hyps', str(tmp_path / 'hyps.txt'),
                      '--level', 'char')
    assert result['rouge'] == pytest.approx(80.0, abs=1e-5)


def test_cli_cslr_on_stm_and_ctm(tmp_path):
    M.write_stm(tmp_path / 'ref.stm', ['a', 'b'], ['A B C', 'D E'])
    M.write_ctm(tmp_path / 'hyp.ctm', ['a', 'b'], ['A A B C', ''])
    result = _run_cli('--refs', str(tmp_path / 'ref.stm'), '--hyps', str(tmp_path / 'hyp.ctm'),
                      '--task', 'CSLR', '--merge-same')
    assert result['wer'] == pytest.approx(40.0)
    assert result['del_rate'] == pytest.approx(40.0)


def test_cli_islr_on_plain_files(tmp_path):
    (tmp_path / 'refs.txt').write_text('hello\nhello\nbye\n')
    (tmp_path / 'hyps.txt').write_text('hello\nyes\nbye\n')
    result = _run_cli('--refs', str(tmp_path / 'refs.txt'), '--hyps', str(tmp_path / 'hyps.txt'),
                      '--task', 'ISLR')
    assert result['top1_acc_pi'] == pytest.approx(200 / 3)
    assert result['top1_acc_pc'] == pytest.approx(75.0)


# ----------------------------------------------------------------------------- official WER

def test_official_wer_scores_the_rewritten_glosses():
    assert M.official_wer(['NORD A'], ['loc-NORD A-PLUSPLUS'])['wer'] == 0.0
    assert M.wer_list(['NORD A'], ['loc-NORD A-PLUSPLUS'])['wer'] == 100.0
    assert M.official_wer(['__ON__ A'], ['A'])['wer'] == 50.0
    assert M.official_wer(['__ON__ A'], ['A'], 'phoenix2014t')['wer'] == 0.0


def test_official_wer_scores_empty_as_a_word():
    official = M.official_wer(['A B C'], ['__EPENTHESIS__'])
    assert official['wer'] == pytest.approx(100.0)
    assert official['sub_rate'] == pytest.approx(100 / 3)
    assert official['del_rate'] == pytest.approx(200 / 3)
    assert M.wer_list(['A B C'], [''])['del_rate'] == pytest.approx(100.0)
    assert M.official_wer(['__ON__'], ['__OFF__'], 'phoenix2014t') == {
        'wer': 100.0, 'sub_rate': 0.0, 'del_rate': 0.0, 'ins_rate': 100.0}


def test_official_wer_ignores_case_like_sclite_unless_asked():
    assert M.official_wer(['NORD REGEN'], ['nord Regen'])['wer'] == 0.0
    assert M.official_wer(['NORD REGEN'], ['nord Regen'], case_sensitive=True)['wer'] == 100.0


def test_official_wer_returns_wer_list_keys():
    assert set(M.official_wer(['A'], ['B'])) == set(M.wer_list(['A'], ['B']))


def _run_phoenix_cli(tmp_path, *extra):
    ids = ['utt1', 'utt2']
    M.write_stm(tmp_path / 'ref.stm', ids, ['__ON__ NORD REGEN', 'HEUTE ABEND'])
    M.write_ctm(tmp_path / 'hyp.ctm', ids, ['loc-NORD regen', ''])
    return _run_cli('--task', 'CSLR', '--refs', str(tmp_path / 'ref.stm'),
                    '--hyps', str(tmp_path / 'hyp.ctm'), *extra)


def test_cli_prints_official_and_raw_phoenix_wer(tmp_path):
    report = _run_phoenix_cli(tmp_path, '--phoenix', 'phoenix2014')
    assert report['num_samples'] == 2
    assert report['official_wer'] == pytest.approx(100 * 3 / 5)   # __ON__ + [EMPTY] B
    assert report['wer'] == pytest.approx(100 * 5 / 5)
    assert _run_phoenix_cli(tmp_path, '--phoenix', 'phoenix2014t')['official_wer'] == \
        pytest.approx(50)
    assert 'official_wer' not in _run_phoenix_cli(tmp_path)


@pytest.mark.parametrize('flag', ['--case-sensitive', '--case_sensitive'])
def test_cli_case_sensitive_in_both_spellings(tmp_path, flag):
    report = _run_phoenix_cli(tmp_path, '--phoenix', 'phoenix2014', flag)
    assert report['official_wer'] == pytest.approx(100 * 4 / 5)


@pytest.mark.parametrize('args, message', [
    (['--task', 'SLT', '--phoenix', 'phoenix2014'], '--phoenix scores glosses'),
    (['--task', 'CSLR', '--case-sensitive'], '--case-sensitive acts on the official'),
])
def test_cli_refuses_phoenix_options_that_would_not_act(tmp_path, args, message):
    (tmp_path / 'r.txt').write_text('A\n')
    completed = subprocess.run([sys.executable, str(REPO_ROOT / 'SLRT_metrics.py'), '--refs',
                                str(tmp_path / 'r.txt'), '--hyps', str(tmp_path / 'r.txt'), *args],
                               capture_output=True, text=True, cwd=REPO_ROOT)
    assert completed.returncode == 2 and 'error:' in completed.stderr
    assert message in completed.stderr


def test_merge_same_applies_before_both_wers():
    merged = M.score(['A B'], ['A A B'], task='CSLR', merge_same=True, phoenix='phoenix2014')
    assert merged['wer'] == 0.0 and merged['official_wer'] == 0.0
    as_is = M.score(['A B'], ['A A B'], task='CSLR', phoenix='phoenix2014')
    assert as_is['wer'] == pytest.approx(50.0) and as_is['official_wer'] == pytest.approx(50.0)
    with pytest.raises(ValueError, match='official PHOENIX WER'):
        M.score(['A'], ['A'], task='SLT', phoenix='phoenix2014')
