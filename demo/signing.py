"""Renders gloss sequences of the Demo sign language as whole-body pose clips.

A sign is a hand shape, a place, a movement and optionally a second hand and a facial movement
(the lexicon below). A clip is a signer (size, position, speed, noise) resting, signing each
gloss with co-articulation, and resting again: knots per track are interpolated per frame,
rendered as COCO-WholeBody-133 joints, and passed through a simulated detector (pixel noise,
unsure hands, missed frames). Used by demo/data.py (the Demo set) and demo/news.py.
"""
from collections import namedtuple

import numpy as np

# ---------------------------------------------------------------------------------- lexicon
Sign = namedtuple('Sign', 'shape loc move hands face frames end_shape roll turn yaw pitch',
                  defaults=('one', None, 10, None, 0.0, 0.0, 0.0, 0.0))
# Curl of thumb, index, middle, ring, pinky (0 straight .. 1 fist) and finger spread.
SHAPES = {'B': (0.7, 0, 0, 0, 0, 0), '5': (0, 0, 0, 0, 0, 1), 'S': (0.8, 1, 1, 1, 1, 0),
          'A': (0, 1, 1, 1, 1, 0), '1': (0.9, 0, 1, 1, 1, 0), 'V': (0.9, 0, 0, 1, 1, 1),
          'W': (0.9, 0, 0, 0, 1, 1), 'Y': (0, 1, 1, 1, 0, 1), 'L': (0, 0, 1, 1, 1, 0.5),
          'C': (0.3, .45, .45, .45, .45, .2), 'O': (0.6, .7, .7, .7, .7, 0),
          'I': (0.9, 1, 1, 1, 0, 0), 'rest': (0.3, 0.3, 0.35, 0.4, 0.45, 0.2)}
# Dominant (right) wrist places in body units: shoulders at x=+-0.5, y=0, y grows downwards;
# image x grows towards the signer's left, so the right hand works at negative x.
LOCATIONS = {'forehead': (-0.05, -0.72), 'temple': (-0.20, -0.68), 'ear': (-0.36, -0.62),
             'cheek': (-0.26, -0.45), 'chin': (-0.02, -0.30), 'neck': (-0.02, -0.05),
             'high': (-0.70, -0.55), 'shoulder': (0.32, 0.05), 'chest': (-0.02, 0.35),
             'neutral': (-0.22, 0.62), 'side': (-0.85, 0.45), 'far': (-0.60, 0.25),
             'stomach': (-0.05, 0.88), 'onbase': (-0.04, 0.45), 'base': (0.04, 0.62),
             'rest': (-0.45, 1.22)}
_circle = [(0.14 * np.sin(a), -0.14 + 0.14 * np.cos(a)) for a in np.linspace(0, 2 * np.pi, 7)]
MOVES = {'hold': [(0, 0), (0, 0.03)], 'tap': [(0, 0), (0, 0.09), (0, 0), (0, 0.09)],
         'out': [(0, 0), (-0.38, 0.05)], 'in': [(0, 0), (0.36, -0.05)],
         'up': [(0, 0), (0, -0.36)], 'down': [(0, 0), (0, 0.36)],
         'arc': [(0, 0), (-0.12, -0.16), (-0.3, -0.12), (-0.4, 0.05)], 'circle': _circle,
         'shake': [(0, 0), (-0.1, 0), (0.1, 0), (-0.1, 0), (0.1, 0)],
         'zigzag': [(0, 0), (-0.12, 0.1), (0.12, 0.2), (-0.12, 0.3)],
         'spread': [(0, 0), (-0.25, 0.1), (-0.25, 0.42)], 'twist': [(0, 0), (0, 0), (0, 0)]}
# Knots of head yaw, head pitch (radians), mouth opening and mouth width over a sign.
FACES = {'shake': [(0, 0, 0, 0), (-.3, 0, 0, 0), (.3, 0, 0, 0), (-.3, 0, 0, 0), (0, 0, 0, 0)],
         'nod': [(0, 0, 0, 0), (0, .25, 0, 0), (0, 0, 0, 0), (0, .25, 0, 0)],
         'open': [(0, 0, 0, 0), (0, 0, .9, 0), (0, 0, .1, 0), (0, 0, .9, 0), (0, 0, 0, 0)],
         'wide': [(0, 0, 0, 0), (0, 0, .2, .8), (0, 0, .2, .8), (0, 0, 0, 0)],
         'purse': [(0, 0, 0, 0), (0, 0, .1, -.7), (0, 0, .1, -.7), (0, 0, 0, 0)],
         'puff': [(0, 0, 0, 0), (0, 0, .5, .3), (0, 0, .5, .3), (0, 0, 0, 0)],
         'tilt': [(0, 0, 0, 0), (.2, -.15, 0, 0), (.2, -.15, 0, 0)]}
# hands: 'one' (right only), 'sym' (left mirrors right) or 'base' (right acts on a still left palm)
LEXICON = {
    # time
    'YESTERDAY': Sign('Y', 'cheek', 'to:ear'), 'TOMORROW': Sign('A', 'cheek', 'arc', frames=11),
    'ALWAYS': Sign('1', 'high', 'circle', roll=90, frames=12),
    # subjects
    'I': Sign('1', 'chest', 'tap', roll=170, frames=8),
    'YOU': Sign('1', 'far', 'in', roll=90, face='nod', frames=8),
    'TEACHER': Sign('B', 'temple', 'down', 'sym'), 'MOTHER': Sign('5', 'chin', 'shake'),
    'FRIEND': Sign('L', 'chest', 'twist', 'sym', turn=150),
    'DOCTOR': Sign('C', 'shoulder', 'tap'), 'CHILD': Sign('B', 'side', 'tap', roll=-90, yaw=150),
    # objects
    'BOOK': Sign('B', 'neutral', 'twist', 'sym', roll=20, turn=-90, frames=12),
    'APPLE': Sign('S', 'cheek', 'twist', turn=70), 'WATER': Sign('W', 'neck', 'tap'),
    'CAR': Sign('S', 'neutral', 'shake', 'sym', roll=30), 'LETTER': Sign('A', 'chin', 'to:neutral'),
    'HOUSE': Sign('B', 'forehead', 'spread', 'sym', roll=45, frames=13),
    'BALL': Sign('C', 'chest', 'circle', 'sym', frames=12),
    'CAKE': Sign('W', 'side', 'circle', frames=12),
    # adjectives
    'BIG': Sign('L', 'neutral', 'out', 'sym', face='puff'),
    'NEW': Sign('B', 'onbase', 'arc', 'base'), 'RED': Sign('1', 'temple', 'twist', turn=90),
    'OLD': Sign('C', 'stomach', 'zigzag', frames=12),
    # verbs
    'BUY': Sign('O', 'onbase', 'up', 'base'), 'SEE': Sign('V', 'cheek', 'out', pitch=40),
    'WANT': Sign('C', 'neutral', 'to:chest', 'sym', end_shape='S'),
    'LIKE': Sign('5', 'chest', 'out', end_shape='O'), 'EAT': Sign('O', 'chin', 'tap', face='open'),
    'READ': Sign('V', 'onbase', 'down', 'base', pitch=50),
    'WRITE': Sign('O', 'onbase', 'zigzag', 'base', frames=12),
    'DRINK': Sign('C', 'chin', 'twist', turn=-70, face='open'),
    'GO': Sign('1', 'neutral', 'arc', 'sym'),
    # places, states, negation
    'SCHOOL': Sign('5', 'onbase', 'tap', 'base'), 'HOME': Sign('O', 'chin', 'to:cheek'),
    'STORE': Sign('O', 'neutral', 'up', 'sym', roll=-60),
    'HAPPY': Sign('B', 'stomach', 'circle', face='wide', frames=12),
    'TIRED': Sign('5', 'chest', 'down', 'sym', roll=90, face='tilt'),
    'SICK': Sign('I', 'forehead', 'tap', face='purse'),
    'NOT': Sign('A', 'chin', 'out', face='shake'),
}
REST_HAND = (*SHAPES['rest'], np.pi, 0.0, 0.0)
BASE_HAND = (*SHAPES['B'], np.radians(-80), np.radians(150), 0.0)


def sign_knots(sign, rng, signer):
    """Per track knot times in [0, 1] and values for one sign.

    Hand tracks ('right', 'left') hold wrist x, y, five curls, spread, roll, yaw and pitch;
    the 'face' track holds head yaw, head pitch, mouth opening and mouth width.
    """
    loc = np.array(LOCATIONS[sign.loc]) + signer['loc_jitter'] + rng.normal(0, 0.02, 2)
    if sign.move.startswith('to:'):
        offsets = np.array([(0, 0), np.subtract(LOCATIONS[sign.move[3:]], LOCATIONS[sign.loc])])
    else:
        offsets = np.array(MOVES[sign.move], float)
    w = np.linspace(0, 1, len(offsets))[:, None]
    start = np.array(SHAPES[sign.shape], float)
    shape = start + w * (np.array(SHAPES[sign.end_shape or sign.shape]) - start)
    angles = np.broadcast_to(np.radians([sign.yaw, sign.pitch]), (len(offsets), 2))
    right = np.concatenate([loc + offsets * signer['amp'], shape,
                            np.radians(sign.roll + w * sign.turn), angles], axis=1)
    if sign.hands == 'sym':
        left = right * np.r_[-1, np.ones(10)]
    elif sign.hands == 'base':
        left = np.tile(np.r_[LOCATIONS['base'] + signer['loc_jitter'], BASE_HAND], (2, 1))
    else:
        left = np.tile(np.r_[signer['left_rest'], REST_HAND], (2, 1))
    face = np.array(FACES[sign.face] if sign.face else np.zeros((2, 4)), float)
    return {name: (np.linspace(0, 1, len(v)), v)
            for name, v in (('right', right), ('left', left), ('face', face))}


# ---------------------------------------------------------------------------------- motion
def sample_signer(rng):
    """Per-clip signer and camera variation."""
    return {'scale_px': 110 * rng.uniform(0.85, 1.15),
            'center': np.array([256 + rng.uniform(-25, 25), 245 + rng.uniform(-15, 15)]),
            'arm': rng.uniform(0.95, 1.05), 'hand': rng.uniform(0.9, 1.1),
            'face': rng.uniform(0.9, 1.1), 'stretch': rng.uniform(0.8, 1.25),
            'amp': rng.uniform(0.85, 1.15), 'loc_jitter': rng.normal(0, 0.03, 2),
            'coarticulation': rng.uniform(0.15, 0.35), 'noise': rng.uniform(0.6, 1.4),
            'sway': rng.normal(0, 0.02, 2), 'sway_freq': rng.uniform(0.02, 0.08),
            'right_rest': np.array(LOCATIONS['rest']) + rng.normal(0, 0.04, 2),
            'left_rest': np.array(LOCATIONS['rest']) * [-1, 1] + rng.normal(0, 0.04, 2)}


def clip_knots(glosses, rng, signer):
    """Knot times and values per track for a whole clip: rest, co-articulated signs, rest."""
    rest = {'right': np.r_[signer['right_rest'], REST_HAND],
            'left': np.r_[signer['left_rest'], REST_HAND], 'face': np.zeros(4)}
    t = rng.uniform(2, 5)
    tracks = {name: ([0.0, t], [v, v]) for name, v in rest.items()}
    for gloss in glosses:
        t += rng.uniform(2.5, 4.5) * signer['stretch']  # transition from the previous sign
        duration = LEXICON[gloss].frames * signer['stretch'] * rng.uniform(0.9, 1.1)
        for name, (rel, values) in sign_knots(LEXICON[gloss], rng, signer).items():
            times, vals = tracks[name]
            # co-articulation: a sign starts partly where the previous one ended
            values[0] += signer['coarticulation'] * (vals[-1] - values[0])
            times.extend(t + rel * duration)
            vals.extend(values)
        t += duration
    t += rng.uniform(2.5, 4.5) * signer['stretch']
    for name, v in rest.items():
        tracks[name][0].extend([t, t + rng.uniform(2, 5)])
        tracks[name][1].extend([v, v])
    return {name: (np.array(times), np.array(vals)) for name, (times, vals) in tracks.items()}


def interpolate(times, values, n_frames, sigma=1.0):
    """Piecewise-linear knots sampled per frame, then Gaussian-smoothed over time."""
    frames = np.arange(n_frames, dtype=float)
    idx = np.clip(np.searchsorted(times, frames, side='right') - 1, 0, len(times) - 2)
    span = np.maximum(times[idx + 1] - times[idx], 1e-6)
    u = np.clip((frames - times[idx]) / span, 0, 1)[:, None]
    curve = values[idx] * (1 - u) + values[idx + 1] * u
    kernel = np.exp(-0.5 * (np.arange(-3, 4) / sigma) ** 2)
    padded = np.pad(curve, ((3, 3), (0, 0)), mode='edge')
    return sum(k * padded[i:i + n_frames] for i, k in enumerate(kernel / kernel.sum()))


# ---------------------------------------------------------------------------------- rendering
# Hand model in hand units (wrist to middle knuckle ~0.46), palm towards the camera, fingers
# up (-y), thumb towards +x; rows are thumb, index, middle, ring, pinky.
FINGER_BASE = np.array([[0.10, -0.10, 0], [0.15, -0.43, 0], [0.04, -0.46, 0],
                        [-0.07, -0.43, 0], [-0.17, -0.38, 0]])
SEGMENTS = np.array([[.20, .15, .12], [.22, .13, .10], [.25, .15, .10], [.23, .14, .10],
                     [.18, .10, .09]])
FLEX = np.radians([[20, 40, 40]] + [[85, 100, 70]] * 4)
REST_DIR = np.radians([50, 8, 0, -6, -14])
SPREAD_DIR = np.radians([25, 8, 0, -8, -16])


def rotations(roll, yaw, pitch):
    """(T, 3, 3) matrices Rz(roll) @ Ry(yaw) @ Rx(pitch)."""
    c, s, o, z = np.cos, np.sin, np.ones_like(roll), np.zeros_like(roll)
    rz = np.stack([c(roll), -s(roll), z, s(roll), c(roll), z, z, z, o], -1).reshape(-1, 3, 3)
    ry = np.stack([c(yaw), z, s(yaw), z, o, z, -s(yaw), z, c(yaw)], -1).reshape(-1, 3, 3)
    rx = np.stack([o, z, z, z, c(pitch), -s(pitch), z, s(pitch), c(pitch)], -1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def render_hand(params, mirror):
    """(T, 21, 2) hand joints relative to the wrist from (T, 9) hand parameters."""
    n, curl, spread = len(params), params[:, :5], params[:, 5]
    phi = REST_DIR + spread[:, None] * SPREAD_DIR
    phi[:, 0] -= curl[:, 0] * np.radians(50)  # the thumb folds across the palm
    theta = np.cumsum(curl[:, :, None] * FLEX, axis=2)
    in_plane = np.stack([np.sin(phi), -np.cos(phi)], -1)[:, :, None, :]
    direction = np.concatenate([np.cos(theta)[..., None] * in_plane, np.sin(theta)[..., None]], -1)
    joints = FINGER_BASE[None, :, None] + np.cumsum(SEGMENTS[None, :, :, None] * direction, axis=2)
    base = np.broadcast_to(FINGER_BASE[None, :, None], (n, 5, 1, 3))
    points = np.concatenate([base, joints], axis=2).reshape(n, 20, 3)
    points = np.concatenate([np.zeros((n, 1, 3)), points], axis=1)
    points = np.einsum('tij,tkj->tki', rotations(*params[:, 6:9].T), points)[..., :2]
    return points * [-1, 1] if mirror else points


def face_template():
    """68 iBUG face landmarks (x, y, depth) around the head centre, in body units."""
    jaw_a = np.linspace(0, np.pi, 17)
    jaw = np.stack([-0.19 * np.cos(jaw_a), -0.02 + 0.27 * np.sin(jaw_a),
                    -0.12 + 0.2 * np.sin(jaw_a)], 1)
    brow = np.stack([np.linspace(-0.15, -0.03, 5), -0.13 - 0.02 * np.sin(np.linspace(0, np.pi, 5)),
                     np.full(5, .12)], 1)
    nose = np.stack([np.zeros(4), np.linspace(-0.09, 0.03, 4), np.linspace(.14, .2, 4)], 1)
    nostrils = np.stack([np.linspace(-.04, .04, 5), np.full(5, .06), np.full(5, .12)], 1)
    eye_a = np.pi + np.arange(6) * np.pi / 3
    eye = np.stack([0.035 * np.cos(eye_a), 0.012 * np.sin(eye_a), np.full(6, .1)], 1)
    outer_a, inner_a = np.pi + np.arange(12) * np.pi / 6, np.pi + np.arange(8) * np.pi / 4
    outer = np.stack([0.07 * np.cos(outer_a), 0.14 + 0.025 * np.sin(outer_a), np.full(12, .12)], 1)
    inner = np.stack([0.05 * np.cos(inner_a), 0.14 + 0.01 * np.sin(inner_a), np.full(8, .12)], 1)
    return np.concatenate([jaw, brow, brow[::-1] * [-1, 1, 1], nose, nostrils,
                           eye + [-0.08, -0.07, 0], eye + [0.08, -0.07, 0], outer, inner])


FACE = face_template()
# how far each face point follows the opening jaw: lower lips fully, the jaw most at the chin
JAW_WEIGHT = (FACE[:, 1] > 0.14) * np.r_[np.sin(np.linspace(0, np.pi, 17)) ** 2, np.ones(51)]
MOUTH = np.arange(68) >= 48
EARS = np.array([[0.2, -0.03, -0.05], [-0.2, -0.03, -0.05]])


def render_face(head, size):
    """(T, 70, 2) face landmarks and both ears relative to the head centre."""
    yaw, pitch, opening, width = head.T
    points = np.broadcast_to(np.concatenate([FACE, EARS]), (len(head), 70, 3)).copy()
    points[:, :68, 1] += 0.08 * opening[:, None] * JAW_WEIGHT
    points[:, :68, 0] *= 1 + 0.3 * width[:, None] * MOUTH
    points = np.einsum('tij,tkj->tki', rotations(np.zeros_like(yaw), yaw, pitch), points)
    return points[..., :2] * size


def elbows(shoulder, wrist, upper, fore, side):
    """Projected elbow positions (T, 2) by two-link inverse kinematics in 3D.

    A wrist seen close to its shoulder is placed in front of the body, as with a bent arm;
    the elbow points down, a little outwards and backwards.
    """
    flat = wrist - shoulder
    dist2d = np.linalg.norm(flat, axis=1, keepdims=True)
    dist = np.clip(np.maximum(dist2d, 0.9 * (upper + fore) / 1.34), 0.2, upper + fore - 1e-3)
    delta = np.concatenate([flat, np.sqrt(np.maximum(dist ** 2 - dist2d ** 2, 0))], axis=1)
    unit = delta / np.maximum(np.linalg.norm(delta, axis=1, keepdims=True), 1e-6)
    along = (upper ** 2 - fore ** 2 + dist ** 2) / (2 * dist)
    height = np.sqrt(np.maximum(upper ** 2 - along ** 2, 0))
    pole = np.array([0.35 * side, 1.0, -0.3])
    normal = pole - np.sum(pole * unit, axis=1, keepdims=True) * unit
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-6)
    return shoulder + (along * unit + height * normal)[:, :2]


LEGS = np.array([[.3, 2.9], [-.3, 2.9], [.3, 3.9], [-.3, 3.9], [.38, 4.0], [.25, 4.0],
                 [.3, 3.95], [-.38, 4.0], [-.25, 4.0], [-.3, 3.95]])  # below the frame


def render_skeleton(tracks, signer):
    """(T, 133, 2) COCO-WholeBody joints in body units from per-frame track values."""
    right, left, head = tracks['right'], tracks['left'], tracks['face']
    n = len(right)
    sway = signer['sway'] * np.sin(2 * np.pi * signer['sway_freq'] * np.arange(n))[:, None, None]
    kp = np.zeros((n, 133, 2))
    kp[:, [5, 6]] = shoulders = sway + [[0.5, 0], [-0.5, 0]]
    kp[:, [9, 10]] = wrists = sway + np.stack([left[:, :2], right[:, :2]], 1)
    upper, fore = 0.72 * signer['arm'], 0.62 * signer['arm']
    kp[:, 7] = elbows(shoulders[:, 0], wrists[:, 0], upper, fore, 1)
    kp[:, 8] = elbows(shoulders[:, 1], wrists[:, 1], upper, fore, -1)
    kp[:, [11, 12]] = 0.3 * sway + [[0.33, 1.85], [-0.33, 1.85]]
    kp[:, 13:23] = LEGS
    face = render_face(head, signer['face']) + sway + [0, -0.55]
    kp[:, 23:91] = face[:, :68]
    kp[:, 0] = face[:, 30]
    kp[:, [1, 2]] = np.stack([face[:, 42:48].mean(1), face[:, 36:42].mean(1)], 1)
    kp[:, [3, 4]] = face[:, 68:70]
    hand_unit = 0.5 * signer['hand']
    kp[:, 91:112] = wrists[:, :1] + hand_unit * render_hand(left[:, 2:], mirror=True)
    kp[:, 112:133] = wrists[:, 1:] + hand_unit * render_hand(right[:, 2:], mirror=False)
    return kp


# Detector confidence and pixel noise per region: body, hips, legs and feet, face, hands.
REGIONS = [(slice(0, 11), 0.9, 1.2), (slice(11, 13), 0.55, 1.5), (slice(13, 23), 0.1, 3.0),
           (slice(23, 91), 0.88, 0.6), (slice(91, 133), 0.8, 0.9)]


def detector_output(kp_body, rng, signer):
    """Pixel keypoints (T, 133, 2) and scores (T, 133) with noise, weak hands, dropped frames."""
    n = len(kp_body)
    keypoints = signer['center'] + signer['scale_px'] * kp_body
    scores, sigma = np.empty((n, 133)), np.empty(133)
    for region, score, noise in REGIONS:
        scores[:, region] = score + rng.uniform(-0.08, 0.06)
        sigma[region] = noise * signer['noise'] * signer['scale_px'] / 110
    scores += rng.normal(0, 0.05, scores.shape)
    keypoints += rng.normal(0, 1, keypoints.shape) * sigma[:, None]
    for hand in (slice(91, 112), slice(112, 133)):
        for _ in range(rng.poisson(0.8)):  # a few frames where the hand detector is unsure
            start = rng.integers(n)
            span = slice(start, start + rng.integers(1, 5))
            scores[span, hand] = rng.uniform(0.05, 0.28, scores[span, hand].shape)
            keypoints[span, hand] += rng.normal(0, 4, keypoints[span, hand].shape)
    if rng.random() < 0.2:  # frames where the person was not detected at all
        dropped = rng.choice(n, rng.integers(1, 3), replace=False)
        keypoints[dropped], scores[dropped] = 0, 0
    return keypoints.astype(np.float32), np.clip(scores, 0, 1).astype(np.float32)


def knots_frames(knots):
    """Frames needed to show every knot of a clip."""
    return int(np.ceil(knots['right'][0][-1])) + 1


def render_clip(knots, signer, rng, n_frames=None):
    """Uni-Sign pose dict of a clip's knots; n_frames beyond the last knot prolong the final
    rest (interpolation holds the last knot)."""
    n_frames = max(n_frames or 0, knots_frames(knots))
    tracks = {name: interpolate(times, values, n_frames) for name, (times, values) in knots.items()}
    keypoints, scores = detector_output(render_skeleton(tracks, signer), rng, signer)
    return {'keypoints': keypoints[:, None], 'scores': scores[:, None]}


def synthesize_clip(glosses, rng):
    """Uni-Sign pose dict for one signed gloss sequence."""
    signer = sample_signer(rng)
    return render_clip(clip_knots(glosses, rng, signer), signer, rng)
