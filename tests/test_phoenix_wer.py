"""Tests for phoenix_wer: each rule of the official PHOENIX rewriting with hand-derived results,
rule order, [EMPTY], and (when the dataset's scripts are at
hand) identical output to the official shell scripts on the same adversarial glosses."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
import SLRT_metrics as M  # noqa: E402
import phoenix_wer as P  # noqa: E402

# gloss -> what PHOENIX-2014's preprocess.sh leaves of it ('' = the gloss is dropped)
PHOENIX2014_GLOSSES = {
    'loc-NORD': 'NORD', 'cl-AUTO': 'AUTO', 'qu-WAS': 'WAS', 'poss-SEIN': 'SEIN', 'lh-A': 'A',
    'Xloc-Y': 'XY', 'loc-loc-A': 'A', 'NORD': 'NORD',
    'lloc-h-A': 'A',            # deleting loc- builds lh-, deleted by a later pass
    'cloc-l-A': 'A',            # ... builds cl-
    'pcl-oss-A': 'A',           # deleting cl- builds poss-
    'llh-oc-A': 'loc-A',        # deleting lh- builds loc-, whose pass has already run
    'S0NNE': 'SONNE', 'HABEN2': 'HABEN', 'S0loc-NNE': 'SONNE',
    'HABEN2RAUM': 'HABEN',      # HABEN2 -> HABEN first, then ENRAUM -> EN
    '__EMOTION__': '', '__PU__': '', '__LEFTHAND__': '', '__EPENTHESIS__': '',
    'A__PU__': 'A', 'A__LEFTHAND__': 'A', 'A__EMOTION__': 'A',
    'A__EPENTHESIS__': '',      # never deleted, only filtered: the whole gloss goes
    '__EMO__PU__TION__X': '',   # deleting __PU__ builds __EMOTION__, filtered afterwards
    '__LEFT__LEFTHAND__HAND__': '',
    '__EMOTION__EMOTION__': 'EMOTION__',
    '__ON__': '__ON__', '__OFF__': '__OFF__', '__WORD__': '__WORD__',
    'ZEIGEN': 'ZEIGEN-BILDSCHIRM', 'HERZEIGEN': 'HERZEIGEN-BILDSCHIRM',
    'ZEIGEN__PU__': 'ZEIGEN-BILDSCHIRM', 'ZEIGEN-BILDSCHIRM': 'ZEIGEN-BILDSCHIRM',
    'ZEIGEN-PLUSPLUS': 'ZEIGEN',    # -PLUSPLUS goes after the ZEIGEN rule
    'ZEIGENRAUM': 'ZEIGEN',         # RAUM goes after the ZEIGEN rule
    'NORDRAUM': 'NORD', 'XRAUM': 'XRAUM', 'RAUM': 'RAUM', 'nordRAUM': 'nordRAUM',
    'RAUMRAUM': 'RAUM', 'NORDRAUM-PLUSPLUS': 'NORD',
    'NORDRA-PLUSPLUSUM': 'NORDRAUM',  # RAUM goes before -PLUSPLUS
    'A-PLUSPLUS-PLUSPLUS': 'A', '-PLUSPLUS': '', 'loc-': '', 'loc-__PU__': '',
    'A+B': 'A+B', 'WIE-AUSSEHEN': 'WIE-AUSSEHEN', 'nord': 'nord', '[EMPTY]': '[EMPTY]',
}

# gloss -> what the PHOENIX-2014-T release's script leaves of it (before merging repeats)
PHOENIX2014T_GLOSSES = {
    '__ON__': '', '__OFF__': '', '__PU__': '', '____': '', '__EPENTHESIS__': '',
    '__EMOTION__X': '', 'A__LEFTHAND__': '', '__LEFT_HAND__': '__LEFT_HAND__',
    'A__PU__': 'A__PU__',
    'loc-NORD': 'NORD', 'loc-loc-NORD': 'loc-NORD', 'Xloc-A': 'Xloc-A', 'cl-AUTO': 'AUTO',
    'loc-cl-A': 'A',            # loc- goes first, then cl-
    'cl-loc-A': 'loc-A',
    'qu-A': 'qu-A', 'poss-A': 'poss-A', 'lh-A': 'lh-A', 'S0NNE': 'S0NNE', 'HABEN2': 'HABEN2',
    'A-PLUSPLUS-PLUSPLUS': 'A-PLUSPLUS', 'loc-A-PLUSPLUS': 'A', 'cl-NORDRAUM-PLUSPLUS': 'NORD',
    'NORDRAUM': 'NORD', 'X-NORDRAUM': 'X-NORD', 'aNORDRAUM': 'aNORDRAUM', 'RAUM': 'RAUM',
    'RAUMRAUM': 'RAUM', 'NORDRAUMX': 'NORDRAUMX', 'ZEIGEN': 'ZEIGEN',
    'loc-': '', 'cl-': '', '-PLUSPLUS': '',
    'loc-__ON__': '__ON__',     # __WORD__ glosses are filtered before loc- goes
}

# reference sentence -> what the PHOENIX-2014-T release's script scores
PHOENIX2014T_REFERENCES = {
    '__ON__ A __OFF__': 'A',
    'AB __LEFTHAND__ CD __EPENTHESIS__ EF __EMOTION__': 'AB CD EF',
    'A__LEFTHAND__ B': 'AB',                # the space after the tag goes with it
    '__EMOTION__X A': 'A',                  # X is glued onto the STM end time
    'loc-AB cl-BC CD-PLUSPLUS NORDRAUM': 'AB BC CD NORD',
    'loc-A cl-B C-PLUSPLUS NORDRAUM': 'A+B+C NORD',  # letters left by the rules are joined
    'cl-loc-A': 'A', 'loc-': 'loc-', 'X-NORDRAUM-PLUSPLUS': 'X-NORD', 'X-__ON__ B': 'X- B',
    'AB-PLUSPLUS-PLUSPLUS': 'AB-PLUSPLUS', '-PLUSPLUS': '-PLUSPLUS',
    'WIE AUSSEHEN': 'WIE-AUSSEHEN', 'ZWIE AUSSEHENX': 'ZWIE-AUSSEHENX',
    'A B C': 'A+B+C', 'X A B C D': 'X+A+B+C+D', 'XY A B C D': 'XY A+B+C+D', 'S C H': 'S+C+H',
    'SCH A B': 'SCH+A+B', 'NN A B': 'NN+A+B', 'A NN B': 'A+NN B',
    'HEUTE HEUTE HEUTE': 'HEUTE', 'A A A A A': 'A+A+A+A+A',  # letters join before merging
    ' '.join(['HEUTE'] * 9): 'HEUTE',                # 9 -> 5 -> 3 -> 2 -> 1 in four passes
    ' '.join(['HEUTE'] * 17): 'HEUTE HEUTE',         # 17 -> 9 -> 5 -> 3 -> 2
    'WIE-AUSSEHEN WIE-AUSSEHEN': 'WIE-AUSSEHEN WIE-AUSSEHEN', 'A1 A1': 'A1 A1',
    'poss-EUCH HABEN2': 'poss-EUCH HABEN2', '': '',
}


def clean(gloss, variant):
    return ' '.join(P.clean_phoenix_gloss(gloss, variant))


@pytest.mark.parametrize('gloss, expected', sorted(PHOENIX2014_GLOSSES.items()))
def test_phoenix2014_rule_on_one_gloss(gloss, expected):
    assert clean(gloss, 'phoenix2014') == expected


@pytest.mark.parametrize('gloss, expected', sorted(PHOENIX2014T_GLOSSES.items()))
def test_phoenix2014t_rule_on_one_gloss(gloss, expected):
    assert clean(gloss, 'phoenix2014t') == expected


@pytest.mark.parametrize('reference, expected', sorted(PHOENIX2014T_REFERENCES.items()))
def test_phoenix2014t_reference_rules(reference, expected):
    assert P.clean_phoenix_reference(reference, 'phoenix2014t') == expected


def test_phoenix2014_rules_needing_two_words_never_fire_on_hypotheses():
    for text in ('WIE AUSSEHEN', 'A B C', 'S C H', 'SCH A B', 'NN A B', 'HEUTE HEUTE', 'A A A'):
        assert P.clean_phoenix_hypothesis(text) == text
    assert P.clean_phoenix_hypothesis('ZEIGEN HEUTE loc-HEUTE') == 'ZEIGEN-BILDSCHIRM HEUTE HEUTE'


def test_phoenix2014t_merges_repeats_after_the_rules():
    assert P.clean_phoenix_hypothesis('A A B A', 'phoenix2014t') == 'A B A'
    assert P.clean_phoenix_hypothesis('A __ON__ A loc-A', 'phoenix2014t') == 'A'
    assert P.clean_phoenix_hypothesis('A a', 'phoenix2014t') == 'A a'


def test_emptied_hypothesis_becomes_the_empty_word():
    for variant in P.VARIANTS:
        assert P.clean_phoenix_hypothesis('', variant) == '[EMPTY]'
        assert P.clean_phoenix_hypothesis('__EPENTHESIS__ loc- -PLUSPLUS', variant) == '[EMPTY]'
    assert P.clean_phoenix_hypothesis('__PU__ __ON__', 'phoenix2014') == '__ON__'
    assert P.clean_phoenix_hypothesis('__PU__ __ON__', 'phoenix2014t') == '[EMPTY]'


def test_gloss_lists_are_accepted():
    assert P.clean_phoenix_hypothesis(['loc-A', 'B C']) == 'A B C'
    assert P.clean_phoenix_reference(['__ON__', 'A'], 'phoenix2014t') == 'A'


def test_phoenix2014_references_are_left_as_they_are():
    text = '__ON__ loc-A A A  B-PLUSPLUS __OFF__'
    assert P.clean_phoenix_reference(text) == ' '.join(text.split())


def test_unknown_variant_raises():
    for function in (P.clean_phoenix_hypothesis, P.clean_phoenix_reference):
        with pytest.raises(ValueError):
            function('A', 'phoenix2015')


def test_apply_steps_stops_at_a_filter():
    steps = [P._sub('A', 'B'), P._drop('B'), P._sub('B', 'C')]
    assert P.apply_steps('xAx', steps) is None
    assert P.apply_steps('xx', steps) == 'xx'


# ----------------------------------------------------------------------------- official scripts

ADVERSARIAL_HYPOTHESES = (
    [gloss for gloss in PHOENIX2014_GLOSSES]
    + [gloss for gloss in PHOENIX2014T_GLOSSES if gloss not in PHOENIX2014_GLOSSES]
    + list(PHOENIX2014T_REFERENCES)
    + ['loc-A A __ON__ A A-PLUSPLUS', 'ZEIGEN ZEIGEN-PLUSPLUS HEUTE', 'A a A', '',
       '__EPENTHESIS__ __PU__ loc-', ' '.join(PHOENIX2014_GLOSSES), '__EMOTION__ -PLUSPLUS'])


T_SCRIPT = ('data/phoenix2014T/evaluation/sign-recognition/'
            'evaluatePHOENIX-2014-T-signrecognition.sh')


def _shell_tools_missing():
    tools = ('bash', 'sed', 'perl', 'awk', 'grep', 'sort')
    return [tool for tool in tools if not shutil.which(tool)]


def _script(variable, default=None):
    """Path of an official script from an environment variable or the dataset folder, or None."""
    path = os.environ.get(variable) or (default and str(REPO_ROOT / default))
    return path if path and os.path.isfile(path) else None


def _read_official_ctm(path, ids):
    """Hypotheses per id from a rewritten CTM, by start time; an id without lines is [EMPTY]
    (mergectmstm.py adds exactly that line)."""
    timed = {}
    with open(path, encoding='utf-8') as handle:
        for line in handle:
            fields = line.split()
            timed.setdefault(fields[0], []).append((float(fields[2]), fields[4:]))
    ordered = {i: sorted(entries, key=lambda entry: entry[0]) for i, entries in timed.items()}
    return [' '.join(g for _, words in ordered.get(i, []) for g in words) or '[EMPTY]'
            for i in ids]


def _official_env(tmp_path):
    return dict(os.environ, LC_ALL='C', PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")


def test_same_output_as_official_phoenix2014_preprocess(tmp_path):
    missing = _shell_tools_missing()
    script = _script('PHOENIX_PREPROCESS', 'data/phoenix2014/evaluation/preprocess.sh')
    if missing:
        pytest.skip(f'needs {", ".join(missing)} to run the official script')
    if not script:
        pytest.skip('the dataset\'s preprocess.sh is not here: set PHOENIX_PREPROCESS or put it in '
                    'data/phoenix2014/evaluation/preprocess.sh')
    ids = [f'utt{index:04d}' for index in range(len(ADVERSARIAL_HYPOTHESES))]
    M.write_ctm(tmp_path / 'in.ctm', ids, ADVERSARIAL_HYPOTHESES)
    subprocess.run(['bash', script, str(tmp_path / 'in.ctm'), str(tmp_path / 'tmp.ctm'),
                    str(tmp_path / 'out.ctm')], check=True, capture_output=True,
                   env=_official_env(tmp_path))
    official = _read_official_ctm(tmp_path / 'out.ctm', ids)
    ours = [P.clean_phoenix_hypothesis(h, 'phoenix2014') for h in ADVERSARIAL_HYPOTHESES]
    assert [(h, o) for h, o, x in zip(ADVERSARIAL_HYPOTHESES, official, ours) if o != x] == []


def test_same_output_as_official_phoenix2014t_evaluation(tmp_path):
    missing = _shell_tools_missing()
    script = _script('PHOENIX_T_EVALUATE', T_SCRIPT)
    if missing:
        pytest.skip(f'needs {", ".join(missing)} to run the official script')
    if not script:
        pytest.skip('the PHOENIX-2014-T release\'s evaluation script is not here: set '
                    f'PHOENIX_T_EVALUATE or put it in {T_SCRIPT}')
    ids = [f'utt{index:04d}' for index in range(len(ADVERSARIAL_HYPOTHESES))]
    references = ADVERSARIAL_HYPOTHESES[::-1]
    M.write_ctm(tmp_path / 'hyp.ctm', ids, ADVERSARIAL_HYPOTHESES)
    M.write_stm(tmp_path / 'PHOENIX-2014-T-groundtruth-dev.stm', ids, references)
    (tmp_path / 'bin').mkdir()
    for stub in (tmp_path / 'mergectmstm.py', tmp_path / 'bin' / 'sclite'):
        stub.write_text('#!/bin/sh\nexit 0\n')
        stub.chmod(0o755)
    subprocess.run(['bash', script, 'hyp.ctm', 'dev'], cwd=tmp_path, capture_output=True,
                   env=_official_env(tmp_path))
    official = _read_official_ctm(tmp_path / 'out.hyp.ctm', ids)
    ours = [P.clean_phoenix_hypothesis(h, 'phoenix2014t') for h in ADVERSARIAL_HYPOTHESES]
    assert [(h, o) for h, o, x in zip(ADVERSARIAL_HYPOTHESES, official, ours) if o != x] == []
    official_refs = {line.split()[0]: ' '.join(line.split()[5:])
                     for line in (tmp_path / 'tmp.stm').read_text(encoding='utf-8').splitlines()}
    ours_refs = [P.clean_phoenix_reference(r, 'phoenix2014t') for r in references]
    assert [(r, official_refs[i], x) for i, r, x in zip(ids, references, ours_refs)
            if official_refs[i] != x] == []
