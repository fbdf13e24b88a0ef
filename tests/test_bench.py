"""Smoke runs of bench/train_step.py, bench/eval_speed.py and bench/gradient_checkpointing.py at
the tiny size (no timing checks)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'bench'))
import eval_speed  # noqa: E402
import train_step  # noqa: E402


def test_train_step_bench_prints_rows_and_the_loss_check(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    out_json = tmp_path / 'train.json'
    train_step.main(['--size', 'tiny', '--steps', '1', '--batch_size', '2', '--device', 'cpu',
                     '--rows', 'all_on', '--json', str(out_json)])
    text = capsys.readouterr().out
    assert 'AMD' in text or 'CPU' in text
    for row in ('baseline', 'all_on'):
        assert f'\n{row} ' in text, row
    relative = float(text.split('relative difference ')[1].split()[0])
    assert relative < 1e-5
    assert out_json.exists()
    split = text.split('where a step goes (CPU time; ratio: baseline / all_on)')[1].splitlines()
    assert [line.split('  ')[0] for line in split[2:8]] == list(train_step.PHASES)
    assert all(float(line.split()[-3].rstrip('s')) >= 0 for line in split[2:8])


def test_train_step_pool_covers_the_same_clips_both_ways():
    opts = train_step.parse_options(['--size', 'tiny', '--steps', '3', '--batch_size', '2'])
    lengths, sentences, bucketed, random_batches = train_step.make_pool(opts)
    assert sorted(sum(bucketed, [])) == sorted(sum(random_batches, []))
    assert len(sentences) == len(lengths) == 100
    assert train_step.padding_fraction(bucketed, lengths) <= train_step.padding_fraction(
        random_batches, lengths)
    with pytest.raises(ValueError, match='unknown row'):
        train_step.row_settings('fastest')
    assert [train_step.row_settings(row)['malloc'] for row in ('baseline', 'malloc', 'defaults')] \
        == ['off', 'on', 'auto']


def test_layer_timings_run(capsys):
    train_step.main(['--layers', '--batch_size', '1', '--mean_frames', '8',
                     '--layer_repeats', '1', '--device', 'cpu'])
    text = capsys.readouterr().out
    assert 'channels_last' in text and 'einsum vs matmul' in text


def test_eval_speed_bench_generates_identical_ids(capsys):
    eval_speed.main(['--size', 'tiny', '--steps', '1', '--batch_size', '2', '--device', 'cpu',
                     '--max_new_tokens', '3', '--num_beams', '2'])
    text = capsys.readouterr().out
    for row in eval_speed.ROWS:
        assert f'\n{row} ' in text and 'NO' not in text.split(row, 2)[-1].splitlines()[0]
    split = text.split('ratio: unisign / one_pass_pooled)\n')[1].splitlines()
    assert [line.split('  ')[0] for line in split[1:5]] == list(eval_speed.EVAL_PHASES)
    assert float(split[1].split()[-3].rstrip('s')) > 0  # the pose encoder ran under the hooks


def test_gradient_checkpointing_bench_prints_ratios_against_the_plain_run(capsys):
    import gradient_checkpointing
    gradient_checkpointing.main(['--shape', 'tiny', '--steps', '1', '--batch_size', '1',
                                 '--mean_frames', '16', '--rows', 'checkpointing',
                                 '--device', 'cpu'])
    text = capsys.readouterr().out
    table = text.split('\nrow ')[1].splitlines()
    assert 'rise MB' in table[0] and 'CPU s/step' in table[0]
    assert table[1].startswith('plain') and table[1].count('1.00x') == 4
    assert table[2].startswith('checkpointing') and len(table) == 3
    with pytest.raises(SystemExit):
        gradient_checkpointing.parse_options(['--rows', 'everything'])


def test_scale_set_reads_its_recorded_lengths(tmp_path):
    import numpy as np
    import pose_store
    import scale_data
    import store_parts
    from datasets import S2T_Dataset
    from sample_checks import scan_samples
    for parts in (1, 2):
        where = scale_data.make(str(tmp_path), 300, parts=parts, frames_on_disk=2)
        dataset = S2T_Dataset(where['labels'], where['pose_dir'], 'train',
                              dataset_name='CSL_News', max_length=10 ** 4)
        recorded = scale_data.clip_lengths(300, 0)[:len(dataset)]
        assert dataset.lengths() == recorded.tolist()
        durations, problems = scan_samples(dataset)
        assert not problems and list(durations.values()) == recorded.tolist()
        assert np.isfinite(dataset[0][1]['body'].numpy()).all()
        if parts == 1:
            assert pose_store.PackedPoseStore(where['pose_dir']).verify() == []
        else:
            assert isinstance(dataset.store, store_parts.PartedStore)
    assert scale_data.make(str(tmp_path), 300, parts=2, frames_on_disk=2) == where  # kept


def test_scale_bench_runs_the_trainer_and_resumes_from_the_caches(tmp_path, capsys):
    import scale
    report = tmp_path / 'report.json'
    assert scale.main(['--clips', '300', '--out', str(tmp_path), '--batches', '2',
                       '--batch_size', '2', '--workers', '1', '--frames_on_disk', '2',
                       '--poll', '0.2', '--report', str(report)]) == 0
    import json
    figures = json.loads(report.read_text())
    assert figures['first']['prescan_read']['train'] == '297 of 297'
    assert figures['resumed']['prescan_read'] == {'train': '0 of 297', 'dev': '0 of 3',
                                                  'test': '0 of 3'}
    assert figures['sampler_state']['state']['batches_done'] >= 4
    assert figures['first']['workers'] and figures['first']['store_touched_mib_per_rank']
    assert 'first training step after' in capsys.readouterr().out


REFERENCE_FILE = '''
import torch.nn as nn
from conftest import reference_signcl


class SignCL(nn.Module):
    def __init__(self, max_distance=32.0, pos_samples=2, neg_samples=4):
        super().__init__()
        self.options = max_distance, pos_samples, neg_samples

    def forward(self, inputs_embeds, margin=20):
        return reference_signcl(inputs_embeds, margin, *self.options)
'''


def test_signcl_bench_times_the_reference_file_it_is_given(capsys, tmp_path):
    import signcl_speed
    small = ['--batch', '2', '--frames', '24', '--dim', '8', '--margin', '4', '--repeats', '1']
    signcl_speed.main(small)
    text = capsys.readouterr().out
    assert 'reference not given' in text and '\n      sampled  reference' not in text
    (tmp_path / 'SignCL.py').write_text(REFERENCE_FILE)
    signcl_speed.main(small + ['--reference', str(tmp_path / 'SignCL.py')])
    text = capsys.readouterr().out
    assert 'deterministic check' in text
    for mode in ('sampled', 'deterministic'):
        assert f'{mode}  reference' in text and f'{mode}  signcl.SignCL' in text
    with pytest.raises(SystemExit, match='no such file'):
        signcl_speed.main(small + ['--reference', str(tmp_path / 'missing.py')])
    (tmp_path / 'other.py').write_text('x = 1\n')
    with pytest.raises(SystemExit, match='no class SignCL'):
        signcl_speed.main(small + ['--reference', str(tmp_path / 'other.py')])


def test_gpu_demand_flops_and_recommended_workers():
    import gpu_demand
    # mT5 FLOPs grow with both lengths; the output layer dominates a long target
    short = gpu_demand.mt5_train_flops(100, 10)
    assert gpu_demand.mt5_train_flops(200, 10) > short < gpu_demand.mt5_train_flops(100, 20)
    extra_token = gpu_demand.mt5_train_flops(100, 11) - short
    assert extra_token > 6 * 768 * 250112
    # the encoder counted on the meta device is about linear in the frames
    one, two = gpu_demand.encoder_train_flops(16), gpu_demand.encoder_train_flops(32)
    assert one > 0 and two == pytest.approx(2 * one, rel=1e-3)
    assert gpu_demand.recommended_workers(100, 100) == 2  # 25% to spare
    assert gpu_demand.recommended_workers(100, 1000) == 1
    parser = __import__('argparse').ArgumentParser()
    gpu_demand.add_demand_flags(parser)
    measured = parser.parse_args(['--step_seconds', '0.1', '--gpu_batch', '8'])
    assert gpu_demand.demand(measured, 120)[:2] == (0.1, pytest.approx(80.0))
    estimated = parser.parse_args(['--mfu', '0.5'])
    slower = parser.parse_args(['--mfu', '0.25'])
    twice = 2 * gpu_demand.demand(estimated, 120)[0]
    assert gpu_demand.demand(slower, 120)[0] == pytest.approx(twice)
    with pytest.raises(SystemExit):
        parser.parse_args(['--mfu', '0'])


def test_data_pipeline_reports_workers_per_gpu(capsys):
    import data_pipeline
    assert data_pipeline.main(['--n', '24', '--epochs', '1', '--calls', '1', '--workers', '0',
                               '--pack_workers', '1', '--step_seconds', '0.05']) == 0
    text = capsys.readouterr().out
    table = text.split('--num_workers\n')[1].splitlines()[:2]
    assert table[0].split()[:2] == ['per-file', 'pickles']
    assert table[1].split()[:2] == ['packed', 'store']
    assert all(int(line.split()[-1]) >= 1 for line in table)
    assert 'measured step time' in text and 'load average' in text


def test_vs_unisign_needs_a_uni_sign_checkout(tmp_path, capsys):
    import vs_unisign
    with pytest.raises(SystemExit):
        vs_unisign.parse_options(['--reference', str(tmp_path)])
    assert 'no models.py (a Uni-Sign checkout is needed)' in capsys.readouterr().err


def test_vs_unisign_splits_the_forward_by_module():
    """Hooks charge each module's forward to its phase (pose parts, pose_proj, mT5 encoder and
    decoder); nested modules of a phase are not counted twice."""
    import torch
    import vs_unisign
    ticks = iter(range(1000))
    model = torch.nn.Module()
    model.proj_linear = torch.nn.ModuleDict({'body': torch.nn.Linear(2, 2)})
    model.pose_proj = torch.nn.Linear(2, 2)
    model.mt5_model = torch.nn.Module()
    model.mt5_model.encoder = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model.mt5_model.decoder = torch.nn.Linear(2, 2)
    spent = vs_unisign.phase_hooks(model, lambda: next(ticks))
    x = torch.ones(1, 2)
    model.mt5_model.decoder(model.mt5_model.encoder(model.pose_proj(model.proj_linear['body'](x))))
    assert spent['pose encoder'] == 2 and spent['mT5 encoder'] == 1 and spent['decoder'] == 1


def test_vs_unisign_report_gives_ratios_per_phase():
    import vs_unisign

    def run(scale, loss):
        phases = {p: scale for p in vs_unisign.PHASES}
        return [{'phases': phases, 'seconds': 6 * scale, 'cpu_seconds': 6 * scale,
                 'peak_gb': 10 * scale, 'loss': loss}]
    lines = vs_unisign.report({'unisign': run(2.0, 1.0), 'ours': run(1.0, 1.0 + 1e-7)}, [9, 7])
    assert lines[0] == 'clips of 7 frames in the timed batches'
    assert any(line.startswith('optimizer') and line.endswith('2.00x') for line in lines)
    assert any(line.startswith('step, CPU time') and '12.000s' in line for line in lines)
    assert 'relative difference 1.0e-07' in lines[-1]


def test_vs_unisign_eval_needs_a_uni_sign_checkout(tmp_path, capsys):
    import vs_unisign_eval
    with pytest.raises(SystemExit):
        vs_unisign_eval.parse_options(['--reference', str(tmp_path)])
    assert 'no models.py (a Uni-Sign checkout is needed)' in capsys.readouterr().err


def test_vs_unisign_eval_counts_lengths_and_finds_differing_sentences():
    import vs_unisign_eval
    eos = 1
    ids = [[0, 5, 1, 1], [0, 5, 6, 7], [0, 1, 1, 1]]
    assert vs_unisign_eval.generated_lengths(ids, eos) == [2, 3, 1]
    assert vs_unisign_eval.first_difference(ids, [list(row) for row in ids]) is None
    assert vs_unisign_eval.first_difference(ids, ids[:1] + [[0, 5, 6, 8]] + ids[2:]) == 1
    assert vs_unisign_eval.first_difference(ids, ids[:2]) == 2


def test_vs_unisign_eval_scales_the_eos_row_of_an_untied_output_layer():
    import torch
    import vs_unisign_eval
    shared = torch.ones(3, 2)
    weights = {'mt5_model.shared.weight': shared, vs_unisign_eval.LM_HEAD: torch.ones(3, 2)}
    vs_unisign_eval.scale_row(weights, vs_unisign_eval.LM_HEAD, 1, 4.0)
    assert weights[vs_unisign_eval.LM_HEAD].tolist() == [[1, 1], [4, 4], [1, 1]]
    with pytest.raises(ValueError, match='tied'):
        vs_unisign_eval.scale_row({'mt5_model.shared.weight': shared,
                                   vs_unisign_eval.LM_HEAD: shared}, vs_unisign_eval.LM_HEAD, 1, 4.0)


def test_vs_unisign_eval_report_gives_ratios_and_lengths():
    import vs_unisign_eval
    opts = vs_unisign_eval.argparse.Namespace(batches=2, batch_size=2, num_beams=4,
                                              max_new_tokens=20, eos_scale=4.0)
    side = {'seconds': 2.0, 'cpu_seconds': 4.0, 'peak_gb': 2.0, 'ready_gb': 1.5}
    fast = dict(side, seconds=1.0, cpu_seconds=1.0, peak_gb=1.0)
    lines = vs_unisign_eval.report(opts, {'unisign': side, 'ours': fast}, [6, 6, 20, 10])
    text = '\n'.join(lines)
    assert 'min 6, median 8, max 20; 6: 2, 10: 1, 20: 1' in text
    assert any(line.startswith('CPU time') and '4.00x' in line for line in lines)
    assert any(line.startswith('peak memory') and '0.50x' in line for line in lines)
    phases = dict.fromkeys(vs_unisign_eval.EVAL_PHASES, 1.0)
    lines = vs_unisign_eval.report(opts, {'unisign': dict(side, phases=dict(phases, decoder=3.0)),
                                          'ours': dict(fast, phases=phases)}, [6, 6, 20, 10])
    assert any(line.startswith('decoder') and line.endswith('3.00x') for line in lines)


def test_linear_kernels_bench_compares_both_products(capsys):
    import linear_kernels
    linear_kernels.main(['--rows', '2,3', '--repeats', '1', '--vocabulary', '50'])
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith('output layer')]
    assert len(rows) == 2 and all('x' in line.split()[-2] for line in rows)
    assert sum(line.startswith(('encoder', 'decoder')) for line in lines) == 6
    assert all(float(line.split()[-1]) < 1e-4 for line in lines[2:])  # rounding only
