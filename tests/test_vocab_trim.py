"""vocab_trim.py through script/trim_vocab.py: the trimmed folder loads as usual and scores and
decodes in-corpus text as the full model does."""
import json
import os

import pytest
import torch
from conftest import load_file_module

import language_models
from demo.data import dataset_paths, tokenizer_sentences
from labels import load_labels
from models import load_mt5

trim_vocab = load_file_module('script/trim_vocab.py')


@pytest.fixture(scope='module')
def demo_lms(demo_root, tmp_path_factory):
    """The Demo set's mT5 and an mBART-50 and T5 on its corpus, by kind."""
    from demo.tiny_lms import build_tiny_lm
    demo = os.path.join(demo_root, 'Demo')
    with open(dataset_paths(demo)['corpus'], encoding='utf-8') as f:
        corpus = tokenizer_sentences([line.strip() for line in f if line.strip()])
    folders = {'mt5': os.path.join(demo, 'mt5')}
    for kind in ('mbart', 't5'):
        folders[kind] = build_tiny_lm(kind, str(tmp_path_factory.mktemp(kind)), corpus,
                                      vocab_size=256, d_model=32, d_ff=64, num_layers=1,
                                      num_heads=2)
    return folders


def trim(full, out, demo_root, *extra):
    return trim_vocab.main(['--mt5_path', full, '--out', str(out), '--dataset', 'Demo',
                            '--data_root', demo_root, *extra])


@pytest.mark.parametrize('kind', ['mt5', 'mbart', 't5'])
def test_trimmed_model_scores_and_decodes_as_the_full_one(demo_lms, demo_root, tmp_path, kind,
                                                          capsys):
    full_dir, out = demo_lms[kind], tmp_path / 'trimmed'
    assert trim(full_dir, out, demo_root, '--splits', 'train') == 0
    with open(out / 'trimmed_from.json') as f:
        rows = json.load(f)['rows']
    full, trimmed = load_mt5(full_dir).eval(), load_mt5(str(out)).eval()
    assert trimmed.config.vocab_size == len(rows) < full.config.vocab_size
    assert f"kept {len(rows)} of {full.config.vocab_size} tokens" in capsys.readouterr().out
    code = 'en_XX' if kind == 'mbart' else None
    full_tok = language_models.read_tokenizer(full_dir, kind, code)
    new_tok = language_models.read_tokenizer(str(out), kind, code)
    texts = [e['text'] for e in load_labels(os.path.join(demo_root, 'Demo', 'labels.train'))][:4]
    old_ids = full_tok(texts, return_tensors='pt', padding=True)['input_ids']
    new_ids = new_tok(texts, return_tensors='pt', padding=True)['input_ids']
    assert torch.equal(torch.tensor(rows)[new_ids], old_ids)
    torch.manual_seed(0)
    states = torch.randn(len(texts), 7, full.config.d_model)
    with torch.no_grad():
        full_logits = full(inputs_embeds=states, labels=old_ids).logits
        new_logits = trimmed(inputs_embeds=states, labels=new_ids).logits
    torch.testing.assert_close(new_logits, full_logits[..., rows], rtol=1e-5, atol=1e-5)
    dropped = sorted(set(range(full.config.vocab_size)) - set(rows))
    with torch.no_grad():
        old_out = full.generate(inputs_embeds=states, num_beams=2, max_new_tokens=8,
                                suppress_tokens=dropped)
        new_out = trimmed.generate(inputs_embeds=states, num_beams=2, max_new_tokens=8)
    assert torch.equal(torch.tensor(rows)[new_out], old_out)
    assert new_tok.batch_decode(new_out, skip_special_tokens=True) == \
        full_tok.batch_decode(old_out, skip_special_tokens=True)


def test_every_special_token_and_the_prompt_are_kept(demo_lms, demo_root, tmp_path):
    out = tmp_path / 'trimmed'
    assert trim(demo_lms['mbart'], out, demo_root, '--splits', 'train,dev') == 0
    tokenizer = language_models.read_tokenizer(str(out), 'mbart', 'de_DE')
    assert {'de_DE', 'zh_CN', 'en_XX', '<mask>', '<pad>', '<unk>'} <= set(tokenizer.get_vocab())
    prompt = 'Translate sign language video to English: '
    assert tokenizer.unk_token_id not in tokenizer(prompt)['input_ids']


@pytest.mark.parametrize('case, message', [
    ('byt5', "ByT5's vocabulary is its 256 bytes"),
    ('not_empty', 'exists and is not empty'),
    ('split', 'has no valid split'),
])
def test_bad_requests_are_named(demo_lms, tiny_lm_dirs, demo_root, tmp_path, capsys, case,
                                message):
    out = tmp_path / 'trimmed'
    full, extra = demo_lms['mt5'], []
    if case == 'byt5':
        full = tiny_lm_dirs['byt5']
    elif case == 'not_empty':
        out.mkdir()
        (out / 'x').write_text('')
    else:
        extra = ['--splits', 'valid']
    assert trim(full, out, demo_root, *extra) == 2
    assert message in capsys.readouterr().err
