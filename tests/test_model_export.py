"""model_export: folders of both output-layer layouts reload as they were written (translate.py's
tests cover the command line, trained checkpoints and the CTC head)."""
import json
import os

import pytest
import torch
from safetensors import safe_open

import model_export
import mt5_layout
from test_models import build, plain_batch


@pytest.mark.parametrize('fixture', ['tiny_mt5_dir', 'tied_mt5_dir'])
def test_translator_folder_round_trip(request, fixture, tmp_path):
    model = build(request.getfixturevalue(fixture), seed=3).eval()
    tied = mt5_layout.is_tied(model.mt5_model)
    assert tied == (fixture == 'tied_mt5_dir')
    info = {'epoch': 4, 'dev_bleu4': 12.5, 'optimizer': {'state': 'left out'}}
    model_export.export(model, model.args, info, str(tmp_path))
    with safe_open(tmp_path / 'model.safetensors', 'pt') as f:
        stored = set(f.keys())
    assert 'mt5_model.shared.weight' in stored and ('mt5_model.lm_head.weight' in stored) != tied
    assert 'gcn_modules.left.layer0_0.gcn.A' in stored  # the hands' shared modules, once
    assert 'gcn_modules.right.layer0_0.gcn.A' not in stored
    with open(tmp_path / 'config.json', encoding='utf-8') as f:
        description = json.load(f)
    assert description['info'] == {'epoch': 4, 'dev_bleu4': 12.5}
    assert 'mt5_path' not in description['flags']
    reloaded, flags, info = model_export.load_exported(str(tmp_path))
    assert mt5_layout.is_tied(reloaded.mt5_model) == tied and info['epoch'] == 4
    assert flags.mt5_path == str(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    src, _ = plain_batch()
    assert torch.equal(reloaded.eval().generate(src, max_new_tokens=5, num_beams=2),
                       model.generate(src, max_new_tokens=5, num_beams=2))
    card = (tmp_path / 'README.md').read_text(encoding='utf-8')
    assert f"output layer {'tied' if tied else 'untied'}" in card and '| dev_bleu4 | 12.5 |' in card


def test_missing_files_are_named(tiny_mt5_dir, tmp_path):
    from config import ConfigError
    model = build(tiny_mt5_dir).eval()
    model_export.export(model, model.args, {}, str(tmp_path))
    os.remove(tmp_path / 'spiece.model')
    os.remove(tmp_path / 'tokenizer.json')
    with pytest.raises(ConfigError, match='has no tokenizer'):
        model_export.load_exported(str(tmp_path))
    os.remove(tmp_path / 'model.safetensors')
    with pytest.raises(ConfigError, match='model.safetensors not found'):
        model_export.load_exported(str(tmp_path))
    with pytest.raises(ConfigError, match='is not a folder'):
        model_export.load_exported(str(tmp_path / 'absent'))
