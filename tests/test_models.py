"""Tests for models: Uni-Sign-compatible pose-to-mT5 translator and checkpoint loading."""
import re

import pytest
import torch
from conftest import default_args

import config
import mt5_layout
from models import (SPEED_DEFAULTS, UNISIGN_SPEED, SignTranslator, Uni_Sign,
                    get_requires_grad_dict, load_checkpoint_weights)

# targets; the tiny mT5 comes from conftest's `tiny_mt5_dir` (an English corpus like these)
SENTENCES = ['the teacher gave a book to the child', 'yesterday we saw a red car',
             'my friend likes hot tea', 'tomorrow they will not come home']
PARTS = {'body': 9, 'left': 21, 'right': 21, 'face_all': 18}
CHANNELS = [8, 16, 32]
ALL_ON = dict(SPEED_DEFAULTS, hands_batch='on')
SPEEDS = {'unisign': UNISIGN_SPEED, 'default': SPEED_DEFAULTS, 'all_on': ALL_ON}


def make_args(mt5_dir, **overrides):
    fields = dict(dataset='How2Sign', hidden_dim=CHANNELS[-1], stgcn_channels=list(CHANNELS),
                  temporal_layers=3, temporal_kernel=5, mt5_path=mt5_dir, label_smoothing=0.2,
                  max_tgt_len=50, task='SLT', rgb_support=False)
    fields.update(overrides)
    return default_args(**fields)


def build(mt5_dir, seed=0, **overrides):
    torch.manual_seed(seed)
    return SignTranslator(make_args(mt5_dir, **overrides))


def plain_batch(batch=3, frames=10, seed=1):
    """A batch as Uni-Sign's collate builds it (no prompt ids, no labels)."""
    g = torch.Generator().manual_seed(seed)
    src = {part: torch.rand(batch, frames, joints, 3, generator=g)
           for part, joints in PARTS.items()}
    mask = torch.ones(batch, frames, dtype=torch.long)
    mask[0, frames - 3:] = 0
    src.update(attention_mask=mask, name_batch=[f'clip{i}' for i in range(batch)],
               src_length_batch=mask.sum(1))
    tgt = {'gt_sentence': SENTENCES[:batch], 'gt_gloss': [''] * batch}
    return src, tgt


def tokenised_batch(tokenizer, batch=3, frames=10):
    """The same batch with the prompt and targets tokenised as the dataset does."""
    src, tgt = plain_batch(batch, frames)
    prompt = config.get_dataset('How2Sign').prompt
    prefix = tokenizer([prompt] * batch, padding='longest', return_tensors='pt')
    labels = tokenizer(tgt['gt_sentence'], padding='longest', truncation=True, max_length=50,
                       return_tensors='pt')['input_ids']
    labels[labels == tokenizer.pad_token_id] = -100
    src = dict(src, prefix_ids=prefix['input_ids'], prefix_mask=prefix['attention_mask'])
    return src, dict(tgt, labels=labels)


def reference_loss(model, src, tgt):
    """Uni-Sign's forward, step by step, on the model's own submodules."""
    features, body = [], None
    for part in ('body', 'left', 'right', 'face_all'):
        feat = model.gcn_modules[part](model.proj_linear[part](src[part]).permute(0, 3, 1, 2))
        if part == 'body':
            body = feat
        else:
            joint = {'left': -2, 'right': -1, 'face_all': 0}[part]
            feat = feat + body[..., joint][..., None].detach()
        feat = model.fusion_gcn_modules[part](feat)
        features.append(feat.mean(-1).transpose(1, 2))
    embeds = model.pose_proj(torch.cat(features, dim=-1) + model.part_para)
    tok = model.mt5_tokenizer
    prefix = tok(['Translate sign language video to English: '] * len(tgt['gt_sentence']),
                 padding='longest', truncation=True, return_tensors='pt')
    embeds = torch.cat([model.mt5_model.encoder.embed_tokens(prefix['input_ids']), embeds], 1)
    mask = torch.cat([prefix['attention_mask'], src['attention_mask']], dim=1)
    labels = tok(tgt['gt_sentence'], return_tensors='pt', padding=True, truncation=True,
                 max_length=50)['input_ids']
    labels[labels == tok.pad_token_id] = -100
    out = model.mt5_model(inputs_embeds=embeds, attention_mask=mask, labels=labels,
                          return_dict=True)
    logits = out['logits'].reshape(-1, out['logits'].shape[-1])
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=model.args.label_smoothing,
                                        ignore_index=-100)
    return loss_fn(logits, labels.reshape(-1)), out['loss']


def test_state_dict_keys_follow_unisign(tiny_mt5_dir):
    model = build(tiny_mt5_dir)
    state = model.state_dict()
    counts = {}
    for key in state:
        counts[key.split('.')[0]] = counts.get(key.split('.')[0], 0) + 1
    assert counts == {'proj_linear': 8, 'gcn_modules': 152, 'fusion_gcn_modules': 180,
                      'part_para': 1, 'pose_proj': 2,
                      'mt5_model': len(model.mt5_model.state_dict())}
    shapes = {
        'proj_linear.left.weight': (8, 3),
        'gcn_modules.body.layer0_0.gcn.conv.weight': (16, 8, 1, 1),
        'gcn_modules.left.layer0_0.gcn.A': (2, 21, 21),
        'gcn_modules.face_all.layer1_0.residual.0.weight': (16, 8, 1, 1),
        'gcn_modules.right.layer2_0.residual.1.running_var': (32,),
        'gcn_modules.body.layer2_0.gcn.bn.num_batches_tracked': (),
        'fusion_gcn_modules.face_all.layer0_0.gcn.A': (2, 18, 18),
        'fusion_gcn_modules.left.layer0_2.tcn.0.weight': (32, 32, 5, 1),
        'fusion_gcn_modules.right.layer0_1.tcn.1.running_mean': (32,),
        'part_para': (128,),
        'pose_proj.weight': (model.mt5_model.config.d_model, 128),
        'mt5_model.shared.weight': tuple(model.mt5_model.shared.weight.shape),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert 'gcn_modules.body.layer0_0.residual.0.weight' not in state  # 8 -> 8: identity
    assert not any('.tcn.' in key for key in state if key.startswith('gcn_modules'))


def test_left_hand_shares_right_hand_modules(tiny_mt5_dir):
    model = build(tiny_mt5_dir)
    for table in (model.proj_linear, model.gcn_modules, model.fusion_gcn_modules):
        assert table['left'] is table['right']
    state = model.state_dict()
    left = [k for k in state if '.left.' in k]
    assert left and all(state[k].data_ptr() == state[k.replace('.left.', '.right.')].data_ptr()
                        for k in left)
    assert Uni_Sign is SignTranslator
    assert model.lang == 'English' and build(tiny_mt5_dir, dataset='CSL_Daily').lang == 'Chinese'


@pytest.mark.parametrize('speed', ['unisign', 'default', 'all_on'])
@pytest.mark.parametrize('train', [False, True])
def test_loss_equals_unisign_reference(tiny_mt5_dir, train, speed):
    model = build(tiny_mt5_dir).train(train)
    model.set_speed(**SPEEDS[speed])
    src, tgt = plain_batch()
    torch.manual_seed(7)
    out = model(src, tgt)
    torch.manual_seed(7)
    expected, _ = reference_loss(model, src, tgt)
    assert torch.isfinite(out['loss'])
    torch.testing.assert_close(out['loss'], expected, rtol=1e-5, atol=0)
    target_lengths = [len(model.mt5_tokenizer(s).input_ids) for s in tgt['gt_sentence']]
    if model.target_logits == 'all':
        assert out['logits'].shape[:2] == (3, max(target_lengths))
    else:
        assert out['token_logits'].shape[0] == sum(target_lengths)
    assert out['inputs_embeds'].shape[1] == out['attention_mask'].shape[1]


def test_without_smoothing_loss_equals_mt5_internal_loss(tiny_mt5_dir):
    model = build(tiny_mt5_dir, label_smoothing=0.0).eval()
    src, tgt = plain_batch()
    _, mt5_loss = reference_loss(model, src, tgt)
    torch.testing.assert_close(model(src, tgt)['loss'], mt5_loss, rtol=1e-5, atol=0)


def test_pretokenised_batch_gives_same_loss(tiny_mt5_dir):
    model = build(tiny_mt5_dir).eval()
    plain = model(*plain_batch())
    src, tgt = tokenised_batch(model.mt5_tokenizer)
    tokenised = model(src, tgt)
    torch.testing.assert_close(tokenised['loss'], plain['loss'], rtol=1e-6, atol=0)
    torch.testing.assert_close(tokenised['attention_mask'], plain['attention_mask'])


def test_backward_reaches_every_pose_module(tiny_mt5_dir):
    model = build(tiny_mt5_dir).train()
    model(*plain_batch())['loss'].backward()
    for name in ('proj_linear.body.weight', 'proj_linear.right.weight', 'part_para',
                 'gcn_modules.face_all.layer0_0.gcn.A', 'pose_proj.weight',
                 'fusion_gcn_modules.left.layer0_2.tcn.0.weight'):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_encode_pose_shape_and_dtype(tiny_mt5_dir):
    model = build(tiny_mt5_dir).eval()
    src, _ = plain_batch(batch=2, frames=6)
    feats = model.encode_pose({k: v.to(torch.bfloat16) if k in PARTS else v
                               for k, v in src.items()})
    assert feats.shape == (2, 6, 4 * CHANNELS[-1]) and feats.dtype == torch.float32
    model.to(torch.bfloat16)
    assert model.encode_pose(src).dtype == torch.bfloat16


@pytest.mark.parametrize('num_beams', [1, 2])
def test_generate(tiny_mt5_dir, num_beams):
    model = build(tiny_mt5_dir).eval()
    src, tgt = plain_batch()
    with torch.no_grad():
        out = model(src, tgt)
    ids = model.generate(out, max_new_tokens=6, num_beams=num_beams)
    assert ids.dtype == torch.long and ids.shape[0] == 3 and ids.shape[1] <= 7
    assert torch.equal(model.generate(src, max_new_tokens=6, num_beams=num_beams), ids)
    texts = model.generate_text(src, max_new_tokens=6, num_beams=num_beams)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_sinusoidal_pose_positions_mark_each_frame(tiny_mt5_dir):
    from models import sinusoidal_positions
    plain = build(tiny_mt5_dir).eval()
    positioned = build(tiny_mt5_dir, pose_positions='sinusoidal').eval()
    assert all(torch.equal(v, positioned.state_dict()[k]) for k, v in plain.state_dict().items())
    src, tgt = plain_batch()
    frames = src['attention_mask'].shape[1]
    with torch.no_grad():
        shift = positioned.embed_inputs(src)[0] - plain.embed_inputs(src)[0]
        prompt = shift.shape[1] - frames
        assert torch.equal(shift[:, :prompt], torch.zeros_like(shift[:, :prompt]))
        table = sinusoidal_positions(frames, shift.shape[2])
        assert torch.allclose(shift[:, prompt:], table.expand_as(shift[:, prompt:]), atol=1e-5)
        out = positioned(src, tgt)
        assert not torch.isclose(out['loss'], plain(src, tgt)['loss'])
        assert torch.equal(positioned.generate(out, max_new_tokens=5, num_beams=2),
                           positioned.generate(src, max_new_tokens=5, num_beams=2))


def test_checkpoint_round_trip_drops_rgb_keys(tiny_mt5_dir, tmp_path):
    trained = build(tiny_mt5_dir, seed=1).eval()
    state = get_requires_grad_dict(trained)
    assert set(state) == set(trained.state_dict())
    extra = {'rgb_support_backbone.0.weight': torch.zeros(2), 'rgb_proj.bias': torch.zeros(2),
             'fusion_pose_rgb_linear.weight': torch.zeros(2, 2),
             'fusion_gate.0.weight': torch.zeros(1)}
    path = tmp_path / 'best_checkpoint.pth'
    torch.save({'model': {**state, **extra}, 'epoch': 3}, path)
    fresh = build(tiny_mt5_dir, seed=2).eval()
    report = load_checkpoint_weights(fresh, str(path))
    assert report['dropped_rgb_keys'] == sorted(extra)
    assert report['loaded_keys'] == len(state) and report['source'] == str(path)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    batch = plain_batch()
    torch.testing.assert_close(fresh(*batch)['loss'], trained(*batch)['loss'])
    assert load_checkpoint_weights(fresh, state)['dropped_rgb_keys'] == []  # bare state dict


@pytest.mark.parametrize('zip_format', [True, False])
def test_checkpoints_of_either_torch_format_load(tiny_mt5_dir, tmp_path, zip_format):
    """Zip files are memory-mapped, legacy ones read whole: the weights are the same."""
    state = build(tiny_mt5_dir, seed=1).state_dict()
    path = tmp_path / 'weights.pth'
    torch.save({'model': state}, path, _use_new_zipfile_serialization=zip_format)
    fresh = build(tiny_mt5_dir, seed=2)
    assert load_checkpoint_weights(fresh, str(path))['loaded_keys'] == len(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize('saved, built', [('tiny_mt5_dir', 'tied_mt5_dir'),
                                         ('tied_mt5_dir', 'tiny_mt5_dir')])
def test_checkpoint_weights_bring_their_layout(request, tmp_path, saved, built):
    """A checkpoint with differing mt5.shared / mt5.lm_head weights loads untied into a model
    built tied, a tied one ties a model built untied; the loaded model computes the same loss,
    gradients included, and a file saved from it keeps the layout."""
    trained = build(request.getfixturevalue(saved), seed=1).train()
    path = tmp_path / 'checkpoint.pth'
    torch.save({'model': get_requires_grad_dict(trained)}, path)
    fresh = build(request.getfixturevalue(built), seed=2).train()
    assert mt5_layout.is_tied(fresh.mt5_model) != mt5_layout.is_tied(trained.mt5_model)
    load_checkpoint_weights(fresh, str(path))
    assert mt5_layout.is_tied(fresh.mt5_model) == mt5_layout.is_tied(trained.mt5_model)
    assert fresh.mt5_model.config.tie_word_embeddings == mt5_layout.is_tied(trained.mt5_model)
    assert len(list(fresh.parameters())) == len(list(trained.parameters()))
    batch = tokenised_batch(trained.mt5_tokenizer)
    expected, got = training_step(trained, batch), training_step(fresh, batch)
    torch.testing.assert_close(got['loss'], expected['loss'], rtol=0, atol=0)
    grads = dict(fresh.named_parameters())
    for name, param in trained.named_parameters():
        torch.testing.assert_close(grads[name].grad, param.grad, rtol=1e-6, atol=1e-7, msg=name)
    assert mt5_layout.state_is_tied(get_requires_grad_dict(fresh)) == \
        mt5_layout.is_tied(trained.mt5_model)


def test_checkpoint_mismatches_raise(tiny_mt5_dir, tmp_path):
    model = build(tiny_mt5_dir)
    state = model.state_dict()
    broken = {k: v for k, v in state.items() if k != 'part_para'}
    broken['geo_head.weight'] = torch.zeros(1)
    path = tmp_path / 'broken.pth'
    torch.save({'model': broken}, path)
    with pytest.raises(config.ConfigError, match='broken.pth') as info:
        load_checkpoint_weights(model, path)
    assert 'part_para' in str(info.value) and 'geo_head.weight' in str(info.value)
    shared = state['mt5_model.shared.weight']
    wrong_vocab = dict(state, **{'mt5_model.shared.weight': torch.zeros(shared.shape[0] + 7,
                                                                        shared.shape[1])})
    with pytest.raises(ValueError, match='vocabulary'):
        load_checkpoint_weights(model, {'model': wrong_vocab})


def test_bad_configurations(tiny_mt5_dir):
    with pytest.raises(ValueError, match='hidden_dim'):
        build(tiny_mt5_dir, hidden_dim=64)
    with pytest.raises(NotImplementedError, match='rgb'):
        build(tiny_mt5_dir, rgb_support=True)


# ---------------------------------------------------------------------------- speed switches

SWITCHES_ON = {'graph_product': 'matmul', 'temporal_conv': 'winograd', 'hands_batch': 'on',
               'target_logits': 'real', 'embed_once': 'on'}


def training_step(model, batch, seed=3):
    torch.manual_seed(seed)  # same mT5 dropout masks
    out = model(*batch)
    out['loss'].backward()
    return out


def assert_same_training_step(reference, candidate, batch):
    """Equal loss (relative 1e-5 in float32), and in float64 (where float rounding cannot hide a
    change of the math) equal loss, gradients, BatchNorm buffers and state-dict layout."""
    expected, got = training_step(reference, batch), training_step(candidate, batch)
    torch.testing.assert_close(got['loss'], expected['loss'], rtol=1e-5, atol=0)
    reference.double().zero_grad()
    candidate.double().zero_grad()
    candidate.load_state_dict(reference.state_dict())
    expected, got = training_step(reference, batch), training_step(candidate, batch)
    torch.testing.assert_close(got['loss'], expected['loss'], rtol=1e-10, atol=0)
    grads = dict(candidate.named_parameters())
    for name, param in reference.named_parameters():
        if param.grad is None:
            assert grads[name].grad is None, name
            continue
        assert grads[name].grad.layout == torch.strided, name  # sparse parts summed in
        # Conv biases feeding a BatchNorm have a true gradient of 0: allow rounding noise there.
        bound = 1e-5 * param.grad.abs().max() + 1e-12
        assert (grads[name].grad - param.grad).abs().max() <= bound, name
    state, reference_state = candidate.state_dict(), reference.state_dict()
    assert list(state) == list(reference_state)
    for key, value in reference_state.items():
        assert state[key].shape == value.shape, key
        if key.endswith('num_batches_tracked'):
            assert torch.equal(state[key], value), key
        else:
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize('switch', [*SWITCHES_ON, 'all'])
def test_speed_switches_keep_loss_gradients_and_statistics(tiny_mt5_dir, switch):
    reference = build(tiny_mt5_dir, **UNISIGN_SPEED).train()
    candidate = build(tiny_mt5_dir, **UNISIGN_SPEED).train()
    candidate.set_speed(**(SWITCHES_ON if switch == 'all' else {switch: SWITCHES_ON[switch]}))
    assert_same_training_step(reference, candidate, tokenised_batch(reference.mt5_tokenizer))


def test_speed_switches_with_regularizers_and_plain_batches(tiny_mt5_dir):
    flags = dict(REGULARIZER_FLAGS['all'], hyp_text_emb_src='decoder')
    reference = build(tiny_mt5_dir, **UNISIGN_SPEED, **flags).train()
    candidate = build(tiny_mt5_dir, **ALL_ON, **flags).train()
    assert candidate.needs_decoder_states
    assert_same_training_step(reference, candidate, plain_batch(frames=40))


@pytest.mark.parametrize('switch', ['embed_once', 'target_logits', 'all'])
def test_mt5_switches_on_the_tied_layout(tied_mt5_dir, switch):
    """The switches that touch mT5's embedding and output layer, also with one tensor for both
    (tiny_mt5_dir, of the tests above, has mt5-base's untied layout)."""
    reference = build(tied_mt5_dir, **UNISIGN_SPEED).train()
    candidate = build(tied_mt5_dir, **UNISIGN_SPEED).train()
    assert mt5_layout.is_tied(reference.mt5_model) and mt5_layout.is_tied(candidate.mt5_model)
    candidate.set_speed(**(SWITCHES_ON if switch == 'all' else {switch: SWITCHES_ON[switch]}))
    assert_same_training_step(reference, candidate, tokenised_batch(reference.mt5_tokenizer))


@pytest.mark.parametrize('fixture', ['tiny_mt5_dir', 'tied_mt5_dir'])
def test_embed_once_gradient_of_each_layout(request, fixture):
    """Untied, the embedding's own gradient is dense; tied, the sparse lookup gradient is summed
    into the output layer's dense one. Either way the optimizer sees a dense gradient."""
    model = build(request.getfixturevalue(fixture), **ALL_ON).train()
    mt5 = model.mt5_model
    assert mt5_layout.is_tied(mt5) == (fixture == 'tied_mt5_dir')
    training_step(model, tokenised_batch(model.mt5_tokenizer))
    assert mt5.shared.weight.grad.layout == torch.strided and not mt5.shared.sparse
    assert mt5.lm_head.weight.grad.layout == torch.strided


def test_untied_layout_trains_two_tensors(tiny_mt5_dir):
    model = build(tiny_mt5_dir).train()
    mt5 = model.mt5_model
    assert not mt5_layout.is_tied(mt5) and not torch.equal(mt5.shared.weight, mt5.lm_head.weight)
    assert mt5.encoder.embed_tokens.weight is mt5.shared.weight is mt5.decoder.embed_tokens.weight
    training_step(model, tokenised_batch(model.mt5_tokenizer))
    assert not torch.equal(mt5.shared.weight.grad, mt5.lm_head.weight.grad)


def test_generation_is_identical_with_speed_switches(tiny_mt5_dir):
    reference = build(tiny_mt5_dir, **UNISIGN_SPEED).eval()
    candidate = build(tiny_mt5_dir, **ALL_ON).eval()
    src, tgt = plain_batch()
    with torch.no_grad():
        expected = reference.generate(reference(src, tgt), max_new_tokens=6, num_beams=2)
    assert torch.equal(candidate.generate(src, max_new_tokens=6, num_beams=2), expected)
    torch.testing.assert_close(candidate.encode_pose(src), reference.encode_pose(src),
                               rtol=1e-5, atol=1e-6)


def test_pooled_beam_search_equals_batch_by_batch(tiny_mt5_dir):
    model = build(tiny_mt5_dir).eval()
    assert not mt5_layout.is_tied(model.mt5_model)
    batches = [plain_batch(batch=3, frames=10, seed=1)[0],
               plain_batch(batch=2, frames=6, seed=2)[0],
               plain_batch(batch=1, frames=8, seed=3)[0]]
    pooled = model.generate_pooled(batches, max_new_tokens=5, num_beams=2, pool_rows=4)
    assert len(pooled) == len(batches)
    for src, ids in zip(batches, pooled):
        assert torch.equal(ids, model.generate(src, max_new_tokens=5, num_beams=2))


def test_hands_batch_modes(tiny_mt5_dir):
    from pose_encoder import hands_in_one_batch
    model = build(tiny_mt5_dir)
    assert model.hands_batch == 'auto' and not hands_in_one_batch(model, torch.zeros(1))  # CPU
    model.set_speed(hands_batch=True)
    assert model.hands_batch == 'on' and hands_in_one_batch(model, torch.zeros(1))
    src, _ = plain_batch()
    model.eval().set_speed(hands_batch='off')
    with torch.no_grad():  # evaluation normalises with the running statistics: all modes agree
        separate = model.encode_pose(src)
        for mode in ('on', 'joint'):
            model.set_speed(hands_batch=mode)
            torch.testing.assert_close(model.encode_pose(src), separate, rtol=1e-5, atol=1e-6)


def test_speed_flags_reach_the_model(tiny_mt5_dir):
    import utils
    argv = ['--dataset', 'How2Sign', '--mt5_path', tiny_mt5_dir, '--stgcn_channels', '8,16,32',
            '--hidden_dim', '32', '--graph_product', 'einsum', '--hands-batch', 'on',
            '--target_logits', 'all', '--embed_once', 'off', '--temporal_conv', 'winograd']
    model = SignTranslator(utils.parse_args('test', argv))
    assert (model.hands_batch, model.target_logits, model.embed_once) == ('on', 'all', 'off')
    assert model.gcn_modules['body'].layer0_0.gcn.graph_product == 'einsum'
    assert model.fusion_gcn_modules['left'].layer0_1.tcn[0].algorithm == 'winograd'
    defaults = SignTranslator(utils.parse_args('test', argv[:8]))
    assert defaults.fusion_gcn_modules['face_all'].layer0_2.gcn.graph_product == 'matmul'
    assert (defaults.hands_batch, defaults.target_logits, defaults.embed_once) == (
        'auto', 'real', 'on')


def test_compiled_encoder_keeps_the_state_dict(tiny_mt5_dir):
    model = build(tiny_mt5_dir)
    keys = {k: v.shape for k, v in model.state_dict().items()}
    model.set_speed(compile_encoder=True)  # compiles lazily: nothing runs here
    assert {k: v.shape for k, v in model.state_dict().items()} == keys


def test_bad_speed_switches(tiny_mt5_dir):
    with pytest.raises(ValueError, match='graph_product'):
        build(tiny_mt5_dir, graph_product='dense')
    model = build(tiny_mt5_dir)
    with pytest.raises(ValueError, match='unknown speed switch'):
        model.set_speed(channels_last=True)
    with pytest.raises(ValueError, match='target_logits'):
        model.set_speed(target_logits='some')


# ------------------------------------------------------------------------------ regularisers

REGULARIZER_FLAGS = {
    'signcl': dict(use_signcl=True),
    'sst': dict(use_sst=True, sst_num=16, sst_dim=16),
    'hyperbolic': dict(use_hyperbolic=True, alpha=0.7, hyp_dim=16),
    'hyperbolic_token_text': dict(use_hyperbolic=True, alpha=0.7, hyp_dim=16,
                                  hyp_text_emb_src='token', hyp_text_cmp='pooled'),
    'all': dict(use_signcl=True, use_sst=True, sst_num=16, sst_dim=16, use_hyperbolic=True,
                alpha=0.7, hyp_dim=16),
}
COMPONENTS = {'signcl': ['signcl_loss'], 'sst': ['sst_loss'], 'hyperbolic': ['hyp_loss'],
              'hyperbolic_token_text': ['hyp_loss'], 'all': ['hyp_loss', 'signcl_loss', 'sst_loss']}


def long_batch(tokenizer):
    """Clips long enough for SignCL to find negatives, one of them padded."""
    return tokenised_batch(tokenizer, batch=3, frames=40)


def test_without_regularizers_the_loss_is_exactly_the_cross_entropy(tiny_mt5_dir):
    model = build(tiny_mt5_dir, target_logits='all').train()
    assert len(model.regularizers) == 0 and not model.needs_decoder_states
    src, tgt = long_batch(model.mt5_tokenizer)
    out = model(src, tgt)
    logits = out['logits']
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tgt['labels'].reshape(-1), ignore_index=-100,
        label_smoothing=0.2)
    assert torch.equal(out['loss'], expected) and torch.equal(out['ce_loss'], expected)
    assert 'stats' not in out and not any(key.startswith('regularizers.') for key in model.state_dict())


@pytest.mark.parametrize('name', list(REGULARIZER_FLAGS))
def test_regularized_forward_is_finite_and_reaches_the_pose_encoder(tiny_mt5_dir, name):
    model = build(tiny_mt5_dir, target_logits='all', **REGULARIZER_FLAGS[name]).train()
    model.progress = 0.5
    src, tgt = long_batch(model.mt5_tokenizer)
    out = model(src, tgt)
    assert torch.isfinite(out['loss']) and out['loss'].dim() == 0
    for component in COMPONENTS[name]:
        assert torch.isfinite(out[component]) and not out[component].requires_grad, component
    assert all(torch.isfinite(v) and v.dim() == 0 and not v.requires_grad
               for v in out['stats'].values())
    # The gradient reaching the pose encoder differs from the cross-entropy's alone.
    logits = out['logits']
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           tgt['labels'].reshape(-1), ignore_index=-100,
                                           label_smoothing=0.2)
    assert torch.equal(ce.detach(), out['ce_loss'])
    weight = model.proj_linear['body'].weight
    total_grad, = torch.autograd.grad(out['loss'], weight, retain_graph=True)
    ce_grad, = torch.autograd.grad(ce, weight)
    alpha = out['stats'].get('hyp_alpha', torch.tensor(1.0))
    assert torch.isfinite(total_grad).all() and total_grad.abs().sum() > 0
    assert not torch.allclose(total_grad, alpha * ce_grad, rtol=1e-4, atol=0)


def test_hyperbolic_loss_blend_follows_progress(tiny_mt5_dir):
    model = build(tiny_mt5_dir, **REGULARIZER_FLAGS['hyperbolic']).eval()
    src, tgt = long_batch(model.mt5_tokenizer)
    alphas = []
    for progress in (0.0, 1.0):
        model.progress = progress
        with torch.no_grad():
            out = model(src, tgt)
        alpha = out['stats']['hyp_alpha']
        alphas.append(alpha.item())
        blended = alpha * out['ce_loss'] + (1 - alpha) * out['hyp_loss']
        torch.testing.assert_close(out['loss'], blended)
    assert alphas == pytest.approx([0.8, 0.9])  # 0.7 + 0.1 * progress + 0.2 * sigmoid(0)
    assert set(out['hyp_embeddings']) >= {'body', 'left', 'right', 'face_all', 'mean', 'text'}


def test_regularizers_leave_the_other_initial_weights_unchanged(tiny_mt5_dir):
    plain = build(tiny_mt5_dir).state_dict()
    regularized = build(tiny_mt5_dir, **REGULARIZER_FLAGS['all']).state_dict()
    assert set(regularized) - set(plain) == {k for k in regularized if k.startswith('regularizers.')}
    assert all(torch.equal(plain[k], regularized[k]) for k in plain)
    assert 'regularizers.hyperbolic.manifold.isp_c' in regularized


def test_checkpoints_load_across_regularizer_settings(tiny_mt5_dir):
    regularized = build(tiny_mt5_dir, seed=1, **REGULARIZER_FLAGS['all'])
    plain = build(tiny_mt5_dir, seed=2)
    report = load_checkpoint_weights(plain, regularized.state_dict())
    assert report['dropped_regularizer_keys'] and not report['fresh_regularizer_keys']
    assert all(k.startswith('regularizers.') for k in report['dropped_regularizer_keys'])
    torch.testing.assert_close(plain.pose_proj.weight, regularized.pose_proj.weight)
    fresh = build(tiny_mt5_dir, seed=3, **REGULARIZER_FLAGS['hyperbolic'])
    curvature = fresh.regularizers['hyperbolic'].manifold.c.item()
    report = load_checkpoint_weights(fresh, plain.state_dict())
    assert report['fresh_regularizer_keys'] and not report['dropped_regularizer_keys']
    assert fresh.regularizers['hyperbolic'].manifold.c.item() == curvature
    with torch.no_grad():
        regularized.regularizers['hyperbolic'].manifold.isp_c.fill_(1.5)
    load_checkpoint_weights(fresh, regularized.state_dict())
    assert fresh.regularizers['hyperbolic'].manifold.isp_c.item() == 1.5


def test_regularized_forward_in_bfloat16_keeps_the_geometry_in_float32(tiny_mt5_dir):
    model = build(tiny_mt5_dir, **REGULARIZER_FLAGS['all']).train().to(torch.bfloat16)
    hyperbolic = model.regularizers['hyperbolic']
    assert model.pose_proj.weight.dtype == torch.bfloat16
    assert hyperbolic.manifold.isp_c.dtype == torch.float32
    out = model(*long_batch(model.mt5_tokenizer))
    assert out['loss'].dtype == torch.float32 and torch.isfinite(out['loss'])
    out['loss'].backward()
    assert torch.isfinite(hyperbolic.manifold.isp_c.grad) and hyperbolic.key_bias.grad is not None


@pytest.mark.parametrize('remove, named', [
    (('config.json',), 'has no config.json'),
    (('model.safetensors',), 'has no weights (model.safetensors or pytorch_model.bin)'),
    (('spiece.model', 'tokenizer.json'), 'has no tokenizer (spiece.model or tokenizer.json)'),
])
def test_incomplete_mt5_folder_is_named(tiny_mt5_dir, tmp_path, remove, named):
    import shutil
    folder = tmp_path / 'mt5'
    shutil.copytree(tiny_mt5_dir, folder)
    for name in remove:
        (folder / name).unlink()
    with pytest.raises(config.ConfigError, match=re.escape(f'the mT5 folder {folder} {named}')):
        build(str(folder))


def test_damaged_mt5_weights_are_named(tiny_mt5_dir, tmp_path):
    import shutil
    folder = tmp_path / 'mt5'
    shutil.copytree(tiny_mt5_dir, folder)
    weights = folder / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(config.ConfigError, match=re.escape(f'the mT5 folder {folder} cannot be loaded')):
        build(str(folder))


@pytest.mark.parametrize('content, problem', [
    (None, 'cannot be read: truncated'), (b'not a checkpoint', 'cannot be read'),
    ({'epoch': 3}, 'holds no model weights'),
])
def test_unreadable_checkpoints_are_named(tiny_mt5_dir, tmp_path, content, problem):
    model = build(tiny_mt5_dir)
    path = tmp_path / 'weights.pth'
    if content is None:
        torch.save({'model': model.state_dict()}, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(config.ConfigError, match=re.escape(f'checkpoint {path} {problem}')):
        load_checkpoint_weights(model, str(path))


def test_checkpoint_of_another_width_names_the_differing_flags(tiny_mt5_dir, tmp_path):
    wide = build(tiny_mt5_dir, stgcn_channels=[8, 16, 48], hidden_dim=48)
    path = tmp_path / 'wide.pth'
    torch.save({'model': wide.state_dict(), 'args': {'stgcn_channels': [8, 16, 48],
                                                     'hidden_dim': 48}}, path)
    narrow = build(tiny_mt5_dir)
    with pytest.raises(config.ConfigError) as info:
        load_checkpoint_weights(narrow, str(path))
    message = str(info.value)
    assert f'checkpoint {path} does not match the model; flags that differ:' in message
    assert '--hidden_dim 48 (checkpoint) vs 32 (this run)' in message


@pytest.mark.parametrize('config_text, problem', [
    ('{"d_model": 32', 'cannot be read as JSON'), ('[1, 2]', 'is not an mT5 config (no d_model)'),
])
def test_damaged_mt5_config_is_named(tiny_mt5_dir, tmp_path, config_text, problem):
    import shutil
    folder = tmp_path / 'mt5'
    shutil.copytree(tiny_mt5_dir, folder)
    (folder / 'config.json').write_text(config_text)
    with pytest.raises(config.ConfigError, match=re.escape(f'{folder}/config.json {problem}')):
        build(str(folder))


def forward_counter(module):
    calls = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))  # recomputations stop early
    return calls


@pytest.mark.parametrize('speed', ['unisign', 'all_on'])
def test_gradient_checkpointing_keeps_loss_gradients_and_statistics(tiny_mt5_dir, speed):
    reference = build(tiny_mt5_dir, **SPEEDS[speed]).train()
    candidate = build(tiny_mt5_dir, **SPEEDS[speed], gradient_checkpointing=True).train()
    # transformers checkpoints a block's forward: its hooks run once, its layers' twice
    mt5_block = forward_counter(candidate.mt5_model.encoder.block[0].layer[0])
    stgcn_block = forward_counter(candidate.gcn_modules['right'][0])
    assert_same_training_step(reference, candidate, tokenised_batch(reference.mt5_tokenizer))
    # Two training steps, each running every block again in its backward pass.
    assert len(mt5_block) == 4 and len(stgcn_block) == 4 * (1 if speed == 'all_on' else 2)
    candidate.eval()
    with torch.no_grad():
        candidate.generate(tokenised_batch(candidate.mt5_tokenizer)[0], max_new_tokens=3,
                           num_beams=1)
    assert len(stgcn_block) == 4 * (1 if speed == 'all_on' else 2) + (1 if speed == 'all_on'
                                                                      else 2)


@pytest.mark.parametrize('kind', ['mbart', 't5', 'byt5'])
@pytest.mark.parametrize('target_logits', ['real', 'all'])
def test_other_language_models_loss_equals_their_own(tiny_lm_dirs, kind, target_logits):
    """The translator's cross-entropy on mBART, T5 (rescaled decoder outputs) and ByT5 equals
    the model's own loss on the same inputs: its label shift, mBART's final_logits_bias and
    scaled prompt embeddings, T5's rescaling."""
    model = build(tiny_lm_dirs[kind], label_smoothing=0.0, target_logits=target_logits,
                  embed_once='on').eval()
    assert model.lm == kind
    src, tgt = plain_batch()
    out = model(src, tgt)
    tok = model.mt5_tokenizer
    labels = tok(tgt['gt_sentence'], return_tensors='pt', padding=True)['input_ids']
    labels[labels == tok.pad_token_id] = -100
    own = model.mt5_model(inputs_embeds=out['inputs_embeds'], attention_mask=out['attention_mask'],
                          labels=labels, return_dict=True)
    torch.testing.assert_close(out['loss'], own.loss, rtol=1e-5, atol=0)
    prompt = tok.convert_ids_to_tokens(tok('Translate sign language video to English: ')
                                       ['input_ids'])
    if kind == 'mbart':  # source format: language code, prompt, </s>; targets likewise
        assert prompt[0] == 'en_XX' and prompt[-1] == '</s>'
        assert (labels[:, 0] == tok.convert_tokens_to_ids('en_XX')).all()


@pytest.mark.parametrize('kind', ['mbart', 't5', 'byt5'])
def test_other_language_models_decode_pooled_as_generate(tiny_lm_dirs, kind):
    """Pooled beam search serves every model (no fallback); mBART's outputs start with </s>
    and the forced target language code."""
    import beam_search
    model = build(tiny_lm_dirs[kind]).eval()
    assert beam_search.unsupported_settings(model.mt5_model.generation_config, 2) == []
    batches = [plain_batch(batch=3, frames=10, seed=1)[0], plain_batch(batch=2, frames=6,
                                                                        seed=2)[0]]
    pooled = model.generate_pooled(batches, max_new_tokens=5, num_beams=2, pool_rows=4)
    for src, ids in zip(batches, pooled):
        assert torch.equal(ids, model.generate(src, max_new_tokens=5, num_beams=2))
        if kind == 'mbart':
            code = model.mt5_tokenizer.convert_tokens_to_ids('en_XX')
            assert (ids[:, 0] == 2).all() and (ids[:, 1] == code).all()


def test_mbart_language_code_flag_and_checkpoint(tiny_lm_dirs, tmp_path):
    """--lang_code sets mBART's source and target code; a checkpoint loads back exactly."""
    model = build(tiny_lm_dirs['mbart'], lang_code='de_DE').eval()
    code = model.mt5_tokenizer.convert_tokens_to_ids('de_DE')
    assert model.mt5_model.generation_config.forced_bos_token_id == code
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': get_requires_grad_dict(model)}, path)
    other = build(tiny_lm_dirs['mbart'], seed=3, lang_code='de_DE').eval()
    load_checkpoint_weights(other, str(path))
    src, tgt = plain_batch()
    torch.testing.assert_close(other(src, tgt)['loss'], model(src, tgt)['loss'])
    with pytest.raises(config.ConfigError, match='holds mbart, not t5'):
        build(tiny_lm_dirs['mbart'], lm='t5')
