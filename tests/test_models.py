"""Tests for models: Uni-Sign-compatible pose-to-mT5 translator and checkpoint loading."""
from types import SimpleNamespace

import pytest
import torch

from models import (SignTranslator, Uni_Sign, get_requires_grad_dict, load_checkpoint_weights,
                    prompt_for)

# targets; the tiny mT5 comes from conftest's `tiny_mt5_dir` (an English corpus like these)
SENTENCES = ['the teacher gave a book to the child', 'yesterday we saw a red car',
             'my friend likes hot tea', 'tomorrow they will not come home']
PARTS = {'body': 9, 'left': 21, 'right': 21, 'face_all': 18}
CHANNELS = [8, 16, 32]


def make_args(mt5_dir, **overrides):
    fields = dict(dataset='How2Sign', hidden_dim=CHANNELS[-1], stgcn_channels=list(CHANNELS),
                  temporal_layers=3, temporal_kernel=5, mt5_path=mt5_dir, label_smoothing=0.2,
                  max_tgt_len=50, task='SLT', rgb_support=False)
    fields.update(overrides)
    return SimpleNamespace(**fields)


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
    prompt = prompt_for('How2Sign')[1]
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


@pytest.mark.parametrize('train', [False, True])
def test_loss_equals_unisign_reference(tiny_mt5_dir, train):
    model = build(tiny_mt5_dir).train(train)
    src, tgt = plain_batch()
    torch.manual_seed(7)
    out = model(src, tgt)
    torch.manual_seed(7)
    expected, _ = reference_loss(model, src, tgt)
    assert torch.isfinite(out['loss'])
    torch.testing.assert_close(out['loss'], expected, rtol=1e-5, atol=0)
    assert out['logits'].shape[:2] == (3, max(len(model.mt5_tokenizer(s).input_ids)
                                               for s in tgt['gt_sentence']))
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


def test_checkpoint_mismatches_raise(tiny_mt5_dir, tmp_path):
    model = build(tiny_mt5_dir)
    state = model.state_dict()
    broken = {k: v for k, v in state.items() if k != 'part_para'}
    broken['geo_head.weight'] = torch.zeros(1)
    path = tmp_path / 'broken.pth'
    torch.save({'model': broken}, path)
    with pytest.raises(RuntimeError, match='broken.pth') as info:
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
    model = build(tiny_mt5_dir).train()
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
    model = build(tiny_mt5_dir, **REGULARIZER_FLAGS[name]).train()
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
