"""Tests for run_folder.py: writable output paths, no fresh start over another run without
--overwrite, one run per folder (stale locks taken over), and a full disk during a save."""
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import PROCESS_GROUP_VARIABLES, ROOT, run_command

import checkpoint
import fine_tuning
import flags
import run_folder


@pytest.fixture(autouse=True)
def keep_the_process_group(monkeypatch):
    """run_command_line ends the process group after a run; the in-process trainings of this
    session share one (see conftest.in_process_trainer), so it must stay."""
    monkeypatch.setattr(fine_tuning.utils, "close_distributed", lambda: None)


def parse(*argv):
    return flags.parse_args("fine_tuning.py", list(argv))


def run_guarded(args):
    """fine_tuning's command-line wrapper around a run that only records that it ran; returns
    (ran, the `error:` message or None)."""
    ran = []
    try:
        fine_tuning.run_command_line(lambda a: ran.append(a), args)
    except SystemExit as stop:
        return bool(ran), str(stop.code)
    return bool(ran), None


def test_output_dir_that_is_a_file_stops_before_the_run(tmp_path):
    target = tmp_path / "out"
    target.write_text("not a folder")
    ran, message = run_guarded(parse("--output_dir", str(target)))
    assert not ran and message == f"error: --output_dir {target} is a file, not a folder"


def test_output_dir_under_a_file_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("x")
    ran, message = run_guarded(parse("--output_dir", str(tmp_path / "file" / "run")))
    assert not ran and "cannot be written" in message


def finished_run(folder):
    folder.mkdir()
    (folder / "best_checkpoint.pth").write_bytes(b"weights")
    (folder / "log.txt").write_text('{"epoch": 0}\n')
    return folder


@pytest.mark.parametrize("resume", ["none", "auto"])
def test_fresh_start_over_another_run_is_refused(tmp_path, resume):
    out = finished_run(tmp_path / "out")
    ran, message = run_guarded(parse("--output_dir", str(out), "--resume", resume))
    assert not ran
    assert f"--output_dir {out} holds another run (best_checkpoint.pth, log.txt)" in message
    assert "--overwrite" in message
    assert (out / "best_checkpoint.pth").read_bytes() == b"weights"


def test_overwrite_removes_the_other_run_first(tmp_path, capsys):
    out = finished_run(tmp_path / "out")
    (out / "training_state").mkdir()
    ran, message = run_guarded(parse("--output_dir", str(out), "--overwrite"))
    assert ran and message is None
    assert sorted(os.listdir(out)) == []
    assert "removing the earlier run" in capsys.readouterr().out


def test_a_resumable_folder_is_resumed_without_overwrite(tmp_path):
    out = finished_run(tmp_path / "out")
    (out / "training_state" / "epoch0").mkdir(parents=True)
    (out / "training_state" / "latest").write_text("epoch0")
    ran, message = run_guarded(parse("--output_dir", str(out)))
    assert ran and message is None and (out / "best_checkpoint.pth").exists()


def write_lock(folder, pid, host=None):
    import socket
    folder.mkdir(exist_ok=True)
    (folder / run_folder.LOCK_NAME).write_text(json.dumps(
        {"host": host or socket.gethostname(), "pid": pid, "started": "2026-01-01T00:00:00"}))


def test_a_second_run_on_a_locked_folder_stops_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "out", holder.pid)
        ran, message = run_guarded(parse("--output_dir", str(tmp_path / "out")))
    finally:
        holder.kill()
        holder.wait()
    assert not ran
    assert f"is in use by the run of process {holder.pid} on" in message
    assert (tmp_path / "out" / run_folder.LOCK_NAME).exists()  # not ours to remove


def test_a_stale_lock_is_taken_over_and_released_at_the_end(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(tmp_path / "out", dead.pid)
    seen = []
    fine_tuning.run_command_line(
        lambda a: seen.append(json.loads((tmp_path / "out" / run_folder.LOCK_NAME).read_text())),
        parse("--output_dir", str(tmp_path / "out")))
    assert seen[0]["pid"] == os.getpid()
    assert f"its process {dead.pid}" in capsys.readouterr().out
    assert not (tmp_path / "out" / run_folder.LOCK_NAME).exists()


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    def failing(args):
        raise fine_tuning.config.ConfigError("bad input")
    with pytest.raises(SystemExit, match="error: bad input"):
        fine_tuning.run_command_line(failing, parse("--output_dir", str(tmp_path / "out")))
    assert not (tmp_path / "out" / run_folder.LOCK_NAME).exists()


def train_args(demo_root, out, epochs):
    return parse("--dataset", "Demo", "--data_root", demo_root, "--output_dir", str(out),
                 "--batch-size", "4", "--gradient-accumulation-steps", "1", "--num_workers", "0",
                 "--dtype", "fp32", "--epochs", str(epochs), "--quick_break", "2",
                 "--stgcn_channels", "8,16", "--hidden_dim", "16", "--temporal_layers", "1",
                 "--max_length", "32", "--num_beams", "1", "--max_new_tokens", "4")


def test_a_full_disk_during_a_save_names_the_folder_and_keeps_the_last_state(
        demo_root, tmp_path, monkeypatch, in_process_trainer):
    out = tmp_path / "run"
    out.mkdir()
    fine_tuning.main(train_args(demo_root, out, epochs=1))
    best = torch.load(out / "best_checkpoint.pth", weights_only=True)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(SystemExit) as stop:
        fine_tuning.run_command_line(fine_tuning.main, train_args(demo_root, out, epochs=2))
    message = str(stop.value.code)
    assert message.startswith(f"error: could not save ") and f"in {out} (No space" in message
    assert f"{out}/training_state/epoch0, is intact" in message
    monkeypatch.undo()
    assert checkpoint.latest_training_state(str(out)) == "epoch0"
    kept = torch.load(out / "best_checkpoint.pth", weights_only=True)
    assert all(torch.equal(kept["model"][k], best["model"][k]) for k in best["model"])
    assert not (out / run_folder.LOCK_NAME).exists()


def test_output_files_in_missing_folders_are_refused(demo_root, tmp_path):
    missing = tmp_path / "nowhere" / "report.json"
    proc = run_command([sys.executable, "script/check_data.py", "--dataset", "Demo",
                        "--data_root", demo_root, "--report", str(missing)], tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"error: --report {missing}: the folder {missing.parent} does not exist" in proc.stderr
    proc = run_command([sys.executable, "translate.py", "clip.pkl", "--checkpoint", "c.pth",
                        "--output", str(tmp_path / "nowhere" / "out.tsv")], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: --output" in proc.stderr and "does not exist" in proc.stderr


def test_a_lock_naming_a_pid_now_used_by_a_later_process_is_taken_over(tmp_path, capsys):
    """A restarted container gives the new run the pid of the one that left the lock (here: this
    very process); the recorded start time tells them apart."""
    out = tmp_path / "out"
    write_lock(out, os.getpid())
    lock = json.loads((out / run_folder.LOCK_NAME).read_text())
    (out / run_folder.LOCK_NAME).write_text(json.dumps(
        {**lock, "start_ticks": run_folder.process_start_ticks(os.getpid()) - 1}))
    ran, message = run_guarded(parse("--output_dir", str(out)))
    assert ran and message is None
    assert f"its process {os.getpid()}" in capsys.readouterr().out
    assert not (out / run_folder.LOCK_NAME).exists()


def test_a_live_holder_started_when_its_lock_says_keeps_the_folder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "out", holder.pid)
        path = tmp_path / "out" / run_folder.LOCK_NAME
        path.write_text(json.dumps({**json.loads(path.read_text()),
                                    "start_ticks": run_folder.process_start_ticks(holder.pid)}))
        ran, message = run_guarded(parse("--output_dir", str(tmp_path / "out")))
    finally:
        holder.kill()
        holder.wait()
    assert not ran and f"is in use by the run of process {holder.pid}" in message


def test_overwrite_starts_afresh_even_with_flags_a_resume_would_refuse(
        demo_root, tmp_path, capsys, in_process_trainer):
    out = tmp_path / "run"
    out.mkdir()
    fine_tuning.main(train_args(demo_root, out, epochs=1))
    changed = train_args(demo_root, out, epochs=1)
    changed.batch_size, changed.overwrite = 2, True
    capsys.readouterr()
    fine_tuning.run_command_line(fine_tuning.main, changed)
    printed = capsys.readouterr().out
    assert "--overwrite: removing the earlier run" in printed and "resumed from" not in printed
    with open(out / "log.txt") as f:
        assert [json.loads(line)["epoch"] for line in f] == [0]
    saved = json.loads((out / "training_state" / "epoch0" / "flags.json").read_text())
    assert saved["batch_size"] == 2


def test_a_full_disk_while_writing_the_log_is_an_error_line(
        demo_root, tmp_path, monkeypatch, in_process_trainer):
    out = tmp_path / "run"
    append = fine_tuning.utils.append_json_line

    def no_space_for_the_epoch_log(path, record):
        if os.path.basename(path) == "log.txt":  # written after the epoch's training state
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        append(path, record)
    monkeypatch.setattr(fine_tuning.utils, "append_json_line", no_space_for_the_epoch_log)
    with pytest.raises(SystemExit) as stop:
        fine_tuning.run_command_line(fine_tuning.main, train_args(demo_root, out, epochs=1))
    message = str(stop.value.code)
    assert message.startswith(f"error: could not write the run's files in {out} (No space")
    assert f"{out}/training_state/epoch0, is intact" in message
    assert not (out / run_folder.LOCK_NAME).exists()


def test_node_local_storage_on_one_node_is_refused(tmp_path):
    args = parse("--output_dir", str(tmp_path / "out"), "--node_local_storage")
    with pytest.raises(run_folder.ConfigError, match="one node"):
        run_folder.check_sharing(args)


def launch_two_nodes(demo_root, folders, *extra):
    """Two simulated nodes of one rank each (torchrun, rendezvous on 127.0.0.1), node n writing
    into folders[n]; returns their (exit status, output)."""
    from conftest import free_port
    from test_fine_tuning import train_args
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k not in PROCESS_GROUP_VARIABLES},
           "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
         "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
         "fine_tuning.py", *train_args(demo_root, folder, "--zero_stage", "2", *extra)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node, folder in enumerate(folders)]
    return [(proc.wait(timeout=600), proc.stdout.read()) for proc in procs]


def test_two_nodes_with_their_own_folders_train_save_and_resume(demo_root, tmp_path):
    folders = [tmp_path / "node0", tmp_path / "node1"]
    for epochs in ("1", "2"):
        results = launch_two_nodes(demo_root, folders, "--epochs", epochs, "--quick_break", "3",
                                   "--node_local_storage")
        for status, output in results:
            assert status == 0, output[-3000:]
    assert "resumed from" in results[0][1]  # only rank 0 prints; the ranks agree on the state
    node0, node1 = folders
    assert json.loads((node0 / "log.txt").read_text().splitlines()[-1])["epoch"] == 1
    assert (node0 / "best_checkpoint.pth").exists() and not (node1 / "log.txt").exists()
    for node, folder in enumerate(folders):  # each node holds what its rank resumes from
        tag = checkpoint.latest_training_state(folder)
        assert tag == "epoch1"
        state = folder / "training_state" / tag
        assert (state / "mp_rank_00_model_states.pt").exists()
        assert [p.name for p in state.glob("*optim_states.pt")] == [
            f"zero_pp_rank_{node}_mp_rank_00_optim_states.pt"]
    shutil.rmtree(node1 / "training_state")
    (status, output), _ = launch_two_nodes(demo_root, folders, "--epochs", "3",
                                           "--quick_break", "3", "--node_local_storage")
    assert status != 0 and "the ranks see different training states" in output, output[-3000:]


def test_two_nodes_that_do_not_share_the_output_folder_are_stopped(demo_root, tmp_path):
    results = launch_two_nodes(demo_root, [tmp_path / "node0", tmp_path / "node1"],
                               "--epochs", "1", "--quick_break", "2")
    for status, output in results:
        assert status != 0 and "is not shared by the 2 nodes" in output, output[-3000:]
