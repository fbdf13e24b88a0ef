"""language_models.py: the model of a folder, its flags' refusals, and tiny mBARTs (mBART-50's
and mbart-large-cc25's layouts) trained, evaluated and used by translate.py end to end."""
import json
import os

import pytest
import torch
from conftest import default_args, trainer_predictions

import beam_search
import config
import flags
import language_models
from models import SignTranslator


def refused(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        flags.parse_args("fine_tuning.py", argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_folders_resolve_to_their_model(tiny_lm_dirs, tiny_mt5_dir):
    assert language_models.resolve(tiny_mt5_dir) == 'mt5'
    for kind, folder in tiny_lm_dirs.items():
        assert language_models.resolve(folder) == kind
        assert language_models.resolve(folder, kind) == kind
    with pytest.raises(config.ConfigError, match="holds t5, not byt5"):
        language_models.resolve(tiny_lm_dirs['t5'], 'byt5')


def test_unknown_model_type_is_named(tmp_path):
    (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'gpt2', 'd_model': 8}))
    with pytest.raises(config.ConfigError, match="holds a 'gpt2' model"):
        language_models.resolve(str(tmp_path))


def test_flags_refused_where_they_cannot_act(tiny_lm_dirs, tiny_mt5_dir, capsys):
    base = ["--dataset", "Demo"]
    err = refused([*base, "--mt5_path", tiny_mt5_dir, "--lang_code", "de_DE"], capsys)
    assert "--lang_code: only mBART takes a language code (the language model here is mt5)" in err
    err = refused([*base, "--mt5_path", tiny_mt5_dir, "--lm", "mbart"], capsys)
    assert "holds mt5, not mbart" in err
    err = refused(["--dataset", "PhoenixTDemo", "--task", "CSLR", "--head", "ctc", "--lm", "t5"],
                  capsys)
    assert "--lm: a CTC recognizer (--head ctc) has no language model" in err
    err = refused(["--dataset", "PhoenixTDemo", "--task", "G2T", "--mt5_path",
                   tiny_lm_dirs['mbart']], capsys)
    assert "--task G2T: gloss-to-text training is built on mT5" in err
    args = flags.parse_args("fine_tuning.py", [*base, "--mt5_path", tiny_lm_dirs['mbart'],
                                               "--lang_code", "de_DE"])
    assert language_models.language_code(args) == 'de_DE'
    assert language_models.language_code(default_args(dataset='PhoenixTDemo')) == 'de_DE'
    assert language_models.language_code(default_args(dataset='CSL_Daily')) == 'zh_CN'


def test_unknown_language_code_is_named(tiny_lm_dirs):
    with pytest.raises(config.ConfigError, match="language code xx_YY is not in the vocabulary"):
        language_models.read_tokenizer(tiny_lm_dirs['mbart'], 'mbart', 'xx_YY')


def train_tiny_mbart(demo_root, folder, **lm_options):
    """Trains a tiny mBART built in `folder` for one short epoch on the Demo set through
    fine_tuning.main; returns (output folder, the trainer's test predictions, the test files)."""
    import fine_tuning
    from datasets import load_labels
    from demo.data import dataset_paths, tokenizer_sentences
    from demo.tiny_lms import build_tiny_lm
    with open(dataset_paths(os.path.join(demo_root, 'Demo'))['corpus'], encoding='utf-8') as f:
        corpus = tokenizer_sentences([line.strip() for line in f if line.strip()])
    mbart = build_tiny_lm('mbart', str(folder / 'mbart'), corpus, vocab_size=256, d_model=32,
                          d_ff=64, num_layers=1, num_heads=2, **lm_options)
    out = folder / 'run'
    fine_tuning.main(flags.parse_args("fine_tuning.py", [
        "--dataset", "Demo", "--data_root", demo_root, "--mt5_path", mbart,
        "--output_dir", str(out), "--batch-size", "4", "--gradient-accumulation-steps", "1",
        "--lr", "3e-3", "--num_workers", "0", "--dtype", "fp32", "--epochs", "1",
        "--quick_break", "3", "--stgcn_channels", "8,16", "--hidden_dim", "16",
        "--temporal_layers", "1", "--max_length", "32", "--num_beams", "2",
        "--max_new_tokens", "8"]))
    with open(out / 'log.txt') as f:
        record = json.loads(f.readlines()[-1])
    assert 'test_bleu4' in record and record['train_loss'] > 0
    expected = trainer_predictions(out)
    assert len(expected) == 8
    demo = os.path.join(demo_root, 'Demo')
    files = [os.path.join(demo, 'pose_format', e['pose_file'])
             for e in load_labels(os.path.join(demo, 'labels.test'))]
    return out, expected, files


def test_tiny_mbart_trains_evaluates_and_translates(demo_root, tmp_path, capsys,
                                                    in_process_trainer):
    """fine_tuning.main trains a tiny mBART-50 for an epoch and evaluates it; translate.py on
    the checkpoint, and on its exported folder, writes the trainer's test predictions."""
    import translate
    out, expected, files = train_tiny_mbart(demo_root, tmp_path)
    capsys.readouterr()
    export = tmp_path / 'exported'
    translate.main(['--checkpoint', str(out / 'best_checkpoint.pth'), *files, '--num_beams', '2',
                    '--batch_size', '4', '--device', 'cpu', '--export', str(export)])
    lines = capsys.readouterr().out
    rows = [line.split('\t') for line in lines.splitlines()]
    assert rows == [[name, ' '.join(text.split())] for name, text in expected]
    translate.main(['--model', str(export), *files, '--num_beams', '2', '--batch_size', '4',
                    '--device', 'cpu', '--decode_pool', '0'])
    assert capsys.readouterr().out == lines
    with open(export / 'config.json') as f:
        description = json.load(f)
    assert description['mt5']['model_type'] == 'mbart'
    tokenizer = language_models.read_tokenizer(str(export), 'mbart', 'en_XX')
    assert description['generation']['forced_bos_token_id'] == \
        tokenizer.convert_tokens_to_ids('en_XX')


CC25_TARGETS = ['the teacher gave a book to the child', 'my friend likes hot tea']


def cc25_translator(folder, seed=0):
    torch.manual_seed(seed)
    return SignTranslator(default_args(
        dataset='How2Sign', mt5_path=folder, hidden_dim=16, stgcn_channels=[8, 16],
        temporal_layers=1, label_smoothing=0.0, max_tgt_len=50, rgb_support=False)).eval()


def pose_batch(batch, frames, seed):
    g = torch.Generator().manual_seed(seed)
    src = {part: torch.rand(batch, frames, joints, 3, generator=g)
           for part, joints in {'body': 9, 'left': 21, 'right': 21, 'face_all': 18}.items()}
    mask = torch.ones(batch, frames, dtype=torch.long)
    mask[0, frames - 3:] = 0
    src.update(attention_mask=mask, name_batch=[f'clip{i}' for i in range(batch)],
               src_length_batch=mask.sum(1))
    return src


def test_cc25_puts_the_language_code_last_and_starts_decoding_from_it(tiny_cc25_dir):
    """mbart-large-cc25 (MBartTokenizer): source "prompt </s> en_XX", labels "text </s> en_XX",
    decoder inputs "en_XX text </s>"; the translator's loss is the model's own."""
    model = cc25_translator(tiny_cc25_dir)
    tok = model.mt5_tokenizer
    assert type(tok).__name__ == 'MBartTokenizer'
    code = tok.convert_tokens_to_ids('en_XX')
    eos = tok.eos_token_id
    prompt, _ = model.prompt_tokens(1, 'cpu')
    assert tok.convert_ids_to_tokens(prompt[0])[-2:] == ['</s>', 'en_XX']
    assert 'en_XX' not in tok.convert_ids_to_tokens(prompt[0])[:-1]
    labels = model.target_labels({'gt_sentence': CC25_TARGETS}, 'cpu')
    for row in labels:
        real = row[row != -100].tolist()
        assert real[-2:] == [eos, code] and code not in real[:-1]
        assert tok.decode(real, skip_special_tokens=True) in CC25_TARGETS
    starts = model.mt5_model.prepare_decoder_input_ids_from_labels(labels=labels)
    assert (starts[:, 0] == code).all()
    assert model.mt5_model.generation_config.decoder_start_token_id == code
    assert model.mt5_model.generation_config.forced_bos_token_id is None
    src = pose_batch(2, 10, seed=1)
    out = model(src, {'gt_sentence': CC25_TARGETS, 'gt_gloss': ['', '']})
    own = model.mt5_model(inputs_embeds=out['inputs_embeds'],
                          attention_mask=out['attention_mask'], labels=labels, return_dict=True)
    torch.testing.assert_close(out['loss'], own.loss, rtol=1e-5, atol=0)


def test_cc25_decodes_pooled_as_generate(tiny_cc25_dir):
    """Pooled beam search reproduces generate on cc25: outputs start with the target language
    code (the decoder start), nothing forced after it."""
    model = cc25_translator(tiny_cc25_dir)
    assert beam_search.unsupported_settings(model.mt5_model.generation_config, 2) == []
    batches = [pose_batch(3, 10, seed=1), pose_batch(2, 6, seed=2)]
    pooled = model.generate_pooled(batches, max_new_tokens=5, num_beams=2, pool_rows=4)
    code = model.mt5_tokenizer.convert_tokens_to_ids('en_XX')
    for src, ids in zip(batches, pooled):
        assert torch.equal(ids, model.generate(src, max_new_tokens=5, num_beams=2))
        assert (ids[:, 0] == code).all()


def test_tiny_cc25_trains_evaluates_and_translates(demo_root, tmp_path, capsys,
                                                   in_process_trainer):
    """fine_tuning.main trains a tiny cc25-layout mBART for an epoch and evaluates it;
    translate.py on the checkpoint writes the trainer's test predictions."""
    import translate
    out, expected, files = train_tiny_mbart(demo_root, tmp_path, cc25=True)
    capsys.readouterr()
    translate.main(['--checkpoint', str(out / 'best_checkpoint.pth'), *files, '--num_beams', '2',
                    '--batch_size', '4', '--device', 'cpu'])
    rows = [line.split('\t') for line in capsys.readouterr().out.splitlines()]
    assert rows == [[name, ' '.join(text.split())] for name, text in expected]


@pytest.mark.parametrize("kind", ["mt5", "t5", "mbart"])
def test_encoder_skips_trailing_padding_with_the_same_states(tiny_lm_dirs, tiny_mt5_dir, kind):
    folder = tiny_mt5_dir if kind == "mt5" else tiny_lm_dirs[kind]
    kind = language_models.resolve(folder)
    encoder = language_models.model_class(kind).from_pretrained(folder).eval().get_encoder()
    torch.manual_seed(0)
    width = encoder.config.d_model
    embeds = torch.randn(3, 12, width)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, 7:] = 0
    mask[1, 0] = 0  # leading padding stays: positions count from the start
    mask[1, 10:] = 0
    with torch.no_grad():
        full = encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        skipped = language_models.encode_real_positions(encoder, embeds, mask)
        unpadded = language_models.encode_real_positions(encoder, embeds[2:], mask[2:])
    real = mask.bool()
    torch.testing.assert_close(skipped[real], full[real], rtol=1e-5, atol=1e-5)
    assert torch.all(skipped[0, 7:] == 0) and torch.all(skipped[1, 10:] == 0)
    assert not torch.equal(full[0, 7:], skipped[0, 7:])
    torch.testing.assert_close(unpadded, full[2:], rtol=1e-5, atol=1e-5)
