"""The pose encoder both heads share, and the one loader of encoder-only weights.

Same computation and state-dict keys as Uni-Sign's pose branch: each body part (x, y, score) is
projected by `proj_linear`, encoded by a spatial chain (`gcn_modules`), enriched with the
detached body feature of its anchor joint, encoded by a temporal chain (`fusion_gcn_modules`)
and averaged over joints; the four part features are concatenated and shifted by `part_para`.
The left hand reuses the right hand's modules; both names stay in the state dict.

`PoseEncoder` is the base class of models.SignTranslator and models.CTCRecognizer, so its keys
sit at the top of both state dicts, as in Uni-Sign's checkpoints. Subclasses add their layers
and then call `init_linear` on themselves, so a seed draws Uni-Sign's initial weights.

Speed switches (SPEED_CHOICES) keep the loss, the gradients and the running statistics of
Uni-Sign's computation up to float rounding; bench/train_step.py measures them. The encoder's
are `graph_product` and `temporal_conv` (stgcn_layers.py), `hands_batch` ('on': both hands
through their shared encoder as one batch with per-hand BatchNorm statistics; 'auto': on CUDA
only; 'joint': one statistic for both hands, which is not Uni-Sign's model) and
`compile_encoder`; the translator adds `target_logits` and `embed_once`.

At inference `encode_real_frames` skips padding: with BatchNorm on its running statistics every
layer but the temporal convolutions acts frame by frame, so a clip's real frames read only its
own frames and the few padded ones the temporal kernels reach (`padding_reach`). On CPU each
clip is encoded on those alone, with the same features at its real frames.
"""
import math
import os
import zipfile
from collections import Counter

import torch
import torch.nn as nn

from config import ConfigError
from fusion import build_fusion, fuse
from keypoints import PARTS
from stgcn_layers import (GRAPH_PRODUCTS, TEMPORAL_CONVS, Graph, TemporalConv2d, batch_groups,
                          get_stgcn_chain, set_checkpointing, set_graph_product,
                          set_temporal_conv)

# body joint whose spatial feature is added (detached) to each other part
BODY_ANCHOR_JOINT = {'left': -2, 'right': -1, 'face_all': 0}
# The pose encoder's keys, shared by the translator, the CTC recognizer and Uni-Sign checkpoints.
ENCODER_PREFIXES = ('proj_linear.', 'gcn_modules.', 'fusion_gcn_modules.', 'part_para')
SPEED_DEFAULTS = {'graph_product': 'matmul', 'temporal_conv': 'direct', 'hands_batch': 'auto',
                  'target_logits': 'real', 'embed_once': 'on', 'compile_encoder': False}
SPEED_CHOICES = {'graph_product': GRAPH_PRODUCTS, 'temporal_conv': TEMPORAL_CONVS,
                 'hands_batch': ('auto', 'on', 'off', 'joint'), 'target_logits': ('real', 'all'),
                 'embed_once': ('on', 'off')}
UNISIGN_SPEED = {'graph_product': 'einsum', 'temporal_conv': 'direct', 'hands_batch': 'off',
                 'target_logits': 'all', 'embed_once': 'off', 'compile_encoder': False}


def speed_options(args):
    """The speed switches of `args` (missing ones take SPEED_DEFAULTS), checked."""
    return check_speed({name: getattr(args, name, None) for name in SPEED_DEFAULTS},
                       defaults=SPEED_DEFAULTS)


def check_speed(switches, defaults=None):
    """Switches with booleans turned into 'on'/'off' and None into `defaults`; raises naming
    an unknown switch or value."""
    checked = {}
    for name, value in switches.items():
        if name not in SPEED_DEFAULTS:
            raise ValueError(f"unknown speed switch {name!r}; "
                             f"expected one of {list(SPEED_DEFAULTS)}")
        if value is None and defaults is not None:
            value = defaults[name]
        if isinstance(value, bool) and name in SPEED_CHOICES:
            value = 'on' if value else 'off'
        if value is not None and name in SPEED_CHOICES and value not in SPEED_CHOICES[name]:
            raise ValueError(f"--{name} {value!r}: expected one of {SPEED_CHOICES[name]}")
        checked[name] = value
    return checked


@torch.no_grad()
def trunc_normal_inverse_cdf_(tensor, std=.02, a=-2., b=2.):
    """Truncated normal N(0, std) on [a, b] by inverse-CDF sampling.

    Uni-Sign's sampling scheme (older PyTorch `nn.init.trunc_normal_` switched to rejection
    sampling), kept so a given seed draws the same initial weights.
    """
    def normal_cdf(x):
        return (1. + math.erf(x / std / math.sqrt(2.))) / 2.
    tensor.uniform_(2 * normal_cdf(a) - 1, 2 * normal_cdf(b) - 1).erfinv_()
    return tensor.mul_(std * math.sqrt(2.)).clamp_(min=a, max=b)


def init_linear(module):
    """Truncated normal (std 0.02) weights and zero biases for Linear layers."""
    if isinstance(module, nn.Linear):
        trunc_normal_inverse_cdf_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class PoseEncoder(nn.Module):
    """Four ST-GCN part encoders: part tensors (B, T, V, 3) -> frame features (B, T, 4 * C)."""

    def __init__(self, args):
        super().__init__()
        channels = list(args.stgcn_channels)
        if args.hidden_dim != channels[-1]:
            raise ValueError(f"hidden_dim ({args.hidden_dim}) must equal the last ST-GCN width "
                             f"({channels[-1]})")
        self.hidden_dim = args.hidden_dim
        self.build_pose_encoder(channels, args.temporal_layers, args.temporal_kernel)
        self.set_speed(**speed_options(args))
        set_checkpointing(self, getattr(args, 'gradient_checkpointing', False))
        self.part_para = nn.Parameter(torch.zeros(self.hidden_dim * len(PARTS)))
        self.fusion = build_fusion(args, self.hidden_dim, len(PARTS))  # None: concatenation

    @property
    def frame_dim(self):
        """Width of encode_pose's frame features."""
        return self.hidden_dim * len(PARTS)

    def build_pose_encoder(self, channels, temporal_layers, temporal_kernel):
        # Modules are created for every part (left included, then replaced by right) so that a
        # given seed draws the same initial weights as Uni-Sign.
        self.proj_linear = nn.ModuleDict()
        adjacency = {}
        for part in PARTS:
            adjacency[part] = torch.tensor(Graph(part, strategy='distance', max_hop=1).A,
                                           dtype=torch.float32)
            self.proj_linear[part] = nn.Linear(3, channels[0])
        self.gcn_modules = nn.ModuleDict()
        self.fusion_gcn_modules = nn.ModuleDict()
        for part in PARTS:
            A = adjacency[part]
            self.gcn_modules[part], width = get_stgcn_chain(
                channels[0], 'spatial', (1, A.size(0)), A, True, channels=channels)
            self.fusion_gcn_modules[part], _ = get_stgcn_chain(
                width, 'temporal', (temporal_kernel, A.size(0)), A, True, channels=channels,
                temporal_layers=temporal_layers)
        for table in (self.gcn_modules, self.fusion_gcn_modules, self.proj_linear):
            table['left'] = table['right']

    def set_speed(self, **switches):
        """Sets speed switches by name (see SPEED_CHOICES; compile_encoder=True compiles the
        part encoders in place, keeping their state-dict keys); None leaves one as it is."""
        switches = check_speed(switches)
        if switches.get('graph_product') is not None:
            set_graph_product(self, switches['graph_product'])
        if switches.get('temporal_conv') is not None:
            set_temporal_conv(self, switches['temporal_conv'])
        for name in ('hands_batch', 'target_logits', 'embed_once'):
            if switches.get(name) is not None:
                setattr(self, name, switches[name])
        if switches.get('compile_encoder'):
            for chain in {id(c): c for table in (self.gcn_modules, self.fusion_gcn_modules)
                          for c in table.values()}.values():
                chain.compile()

    def encode_pose(self, src_input):
        """(B, T, 4*C) pose features: the four part features fused (fusion.py)."""
        return self.fuse_parts(self.encode_parts(src_input))

    def fuse_parts(self, parts):
        """(B, T, 4*C) frame features of the four part features: concatenated plus
        `part_para` (--fusion concat), or through the fusion module."""
        return fuse(self.fusion, parts, self.part_para)

    def encode_parts(self, src_input):
        """The four (B, T, C) part features, body, left, right, face, before `part_para`."""
        dtype, device = self.part_para.dtype, self.part_para.device
        x = {part: src_input[part].to(device=device, dtype=dtype) for part in PARTS}
        body = spatial_features(self, 'body', x['body'])
        features = {'body': temporal_features(self, 'body', body)}
        if hands_in_one_batch(self, body):
            groups = 1 if self.hands_batch == 'joint' else 2
            both = spatial_features(self, 'right', torch.cat([x['left'], x['right']]), groups)
            anchors = torch.cat([anchor_feature(body, 'left'), anchor_feature(body, 'right')])
            both = temporal_features(self, 'right', both + anchors, groups)
            features['left'], features['right'] = both.chunk(2)
        for part in PARTS[1:]:
            if part not in features:
                feat = spatial_features(self, part, x[part]) + anchor_feature(body, part)
                features[part] = temporal_features(self, part, feat)
        return [features[part] for part in PARTS]

    def padding_reach(self):
        """How many frames past a clip's end its real frames' features read: the temporal
        kernels' half-widths, summed along the deepest chain (the spatial chain has none)."""
        return max(sum(conv.padding[0] * conv.dilation[0] for conv in chain.modules()
                       if isinstance(conv, TemporalConv2d))
                   for chain in self.fusion_gcn_modules.values())

    def frame_by_frame(self):
        """Whether every BatchNorm normalises with running statistics (eval mode), so that only
        the temporal convolutions mix frames."""
        return not any(m.training or not m.track_running_stats for m in self.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm))

    def encode_real_frames(self, src_input):
        """encode_parts' four (B, T, C) part features at every real frame (attention_mask 1),
        each clip encoded on its own from its real frames and the `padding_reach` frames after
        them; features past those are zero. Falls back to encode_parts in training mode, for
        masks that are not a prefix of ones, when no frame would be skipped, and off the CPU
        (a GPU runs the padded batch at once; clip by clip it would wait on small kernels)."""
        mask = src_input['attention_mask']
        batch, frames = mask.shape
        lengths = mask.sum(1)
        prefix = torch.arange(frames, device=mask.device)[None] < lengths[:, None]
        needed = torch.clamp(lengths + self.padding_reach(), max=frames).tolist()
        if (self.part_para.device.type != 'cpu' or not self.frame_by_frame()
                or not torch.equal(mask.bool(), prefix) or sum(needed) == batch * frames):
            return self.encode_parts(src_input)
        features = None
        for i, length in enumerate(needed):
            clip = {part: src_input[part][i:i + 1, :length] for part in PARTS}
            parts = self.encode_parts(clip)
            if features is None:
                features = [part.new_zeros(batch, frames, part.shape[-1]) for part in parts]
            for whole, part in zip(features, parts):
                whole[i, :length] = part[0]
        return features


def spatial_features(encoder, part, x, groups=1):
    """(B, T, V, 3) keypoints -> (B, C, T, V) spatial features of `part`; with groups > 1 the
    batch holds `groups` parts sharing the modules, normalised apart."""
    chain = encoder.gcn_modules[part]
    with batch_groups(chain, groups):
        return chain(encoder.proj_linear[part](x).permute(0, 3, 1, 2))


def temporal_features(encoder, part, feat, groups=1):
    """(B, C, T, V) -> temporal chain -> mean over joints -> (B, T, C)."""
    chain = encoder.fusion_gcn_modules[part]
    with batch_groups(chain, groups):
        return chain(feat).mean(-1).transpose(1, 2)


def anchor_feature(body_feat, part):
    """The detached body feature (B, C, T, 1) at the joint `part` hangs from."""
    return body_feat[..., BODY_ANCHOR_JOINT[part]][..., None].detach()


def hands_in_one_batch(encoder, reference):
    mode = getattr(encoder, 'hands_batch', 'auto')
    return mode in ('on', 'joint') or (mode == 'auto' and reference.is_cuda)


# ----------------------------------------------------------------------------- weights

# Model-shape flags a checkpoint stores: named when its weights do not fit the run's model.
SHAPE_FLAGS = ('stgcn_channels', 'hidden_dim', 'temporal_layers', 'temporal_kernel', 'head',
               'ctc_hidden', 'share_classifier', 'weight_norm', 'pose_positions', 'use_signcl', 'use_sst', 'sst_num', 'sst_dim', 'use_hyperbolic', 'hyp_dim',
               'mapper', 'fusion', 'fusion_shortcut')


def check_checkpoint_file(path, flag):
    """A cheap look at a checkpoint file before any data is read or model built: it must be a
    file, and a zip-format torch file (what torch.save writes) must have its closing index,
    which a truncated copy lacks. ConfigError naming `flag` and the file otherwise."""
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise ConfigError(f"{flag} checkpoint {path} does not exist")
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
    except OSError as error:
        raise ConfigError(f"{flag} {path} cannot be read: {error.strerror or error}") from None
    if not head:
        raise ConfigError(f"{flag} {path} is empty")
    if head.startswith(b'PK') and not zipfile.is_zipfile(path):
        raise ConfigError(f"{flag} {path} is truncated: its zip index is missing (copy the file "
                          "again)")
    if not head.startswith((b'PK', b'\x80')):  # zip, or torch's legacy pickle format
        raise ConfigError(f"{flag} {path} is not a torch weight file (written by torch.save)")


def first_sentence(error):
    text = str(error).strip().splitlines()[0] if str(error).strip() else ''
    return text.split('. ')[0][:200]


def load_checkpoint_file(path):
    """What a torch checkpoint file holds, loaded without running code from it; a missing,
    truncated or foreign file raises ConfigError naming it.

    Files of torch's zip format are memory-mapped: their tensors are read from the page cache as
    they are copied into a model, never allocated on the heap, where (with the allocator keeping
    freed memory, utils.keep_freed_memory) a whole model's worth would stay resident."""
    if os.path.isdir(path):
        raise ConfigError(f"checkpoint {path} is a folder, not a checkpoint file")
    try:
        return torch.load(path, map_location='cpu', weights_only=True,
                          mmap=zipfile.is_zipfile(path))
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} does not exist") from None
    except Exception as error:  # torch raises several kinds for damaged or foreign files
        raise ConfigError(f"checkpoint {path} cannot be read: truncated, or not a torch weight "
                          f"file ({type(error).__name__}: {first_sentence(error)})") from None


def read_checkpoint(path_or_state_dict, source=None):
    """(source name, state dict) of a checkpoint file or state dict (`source` names where that
    came from): `{'model': state}` or a bare state dict, DataParallel's `module.` prefix
    removed."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.fspath(path_or_state_dict)
        state = load_checkpoint_file(source)
    else:
        source, state = source or '<in-memory state dict>', path_or_state_dict
    if isinstance(state, dict) and isinstance(state.get('model'), dict):
        state = state['model']
    if not isinstance(state, dict) or not state or not all(
            isinstance(key, str) and torch.is_tensor(value) for key, value in state.items()):
        raise ConfigError(f"checkpoint {source} holds no model weights (expected a "
                          "{'model': state_dict} or a state dict of tensors)")
    if state and all(key.startswith('module.') for key in state):
        state = {key[len('module.'):]: value for key, value in state.items()}
    return source, dict(state)


def flag_differences(path_or_state_dict, model):
    """'; flags that differ: --hidden_dim 256 (checkpoint) vs 32 (this run), ...' from the flags
    a checkpoint file stores, or '' when it stores none or none differ."""
    saved = path_or_state_dict
    if isinstance(saved, (str, os.PathLike)):
        saved = load_checkpoint_file(saved)
    stored = saved.get('args') if isinstance(saved, dict) else None
    model_args = getattr(model, 'args', None)
    current = vars(model_args) if model_args is not None else {}
    if not isinstance(stored, dict) or not current:
        return ''
    differ = [f"--{name} {stored[name]} (checkpoint) vs {current[name]} (this run)"
              for name in SHAPE_FLAGS
              if name in stored and name in current and stored[name] != current[name]]
    return f"; flags that differ: {', '.join(differ)}" if differ else ''


def key_list(keys, limit=20):
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def load_encoder_weights(model, path_or_state_dict, source=None):
    """Loads only the pose encoder (ENCODER_PREFIXES keys, BatchNorm statistics included) from
    a checkpoint of any head: a CTC recognizer, a translator, pretraining or Uni-Sign. Every
    encoder key must be there with the model's shape; the rest is left as it is. Returns
    {'source', 'loaded_keys', 'skipped'} (skipped: counts of other keys by first name)."""
    source, state = read_checkpoint(path_or_state_dict, source)
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
    problems = [f"{k} {tuple(state[k].shape) if k in state else 'absent'} vs {tuple(v.shape)}"
                for k, v in expected.items() if k not in state or state[k].shape != v.shape]
    if problems:
        raise ConfigError(f"checkpoint {source} has no pose encoder of this shape: "
                          f"[{key_list(problems)}]{flag_differences(path_or_state_dict, model)} "
                          "(check --stgcn_channels, --hidden_dim, --temporal_layers)")
    model.load_state_dict({k: state[k] for k in expected}, strict=False)
    skipped = Counter(k.split('.')[0] for k in state if k not in expected)
    return {'source': source, 'loaded_keys': len(expected), 'skipped': dict(skipped)}
