"""DDP on the CPU: two gloo processes train the same tiny net and must end with the same weights."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from fcnseg import distributed
from fcnseg.train.config import TrainConfig
from fcnseg.train.trainer import Trainer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(out):
    return TrainConfig(
        arch="fcn8s",
        widths=(4, 8, 8, 16, 16, 32),
        train_images=8,
        val_images=2,
        image_size=(32, 40),
        loss="mean",
        optimizer="adam",
        lr=3e-3,
        weight_decay=0.0,
        batch_size=1,
        epochs=3,
        weight_init="kaiming",
        preprocess="imagenet",
        loss_keep_prob=0.8,
        progress=False,
        device="cpu",
        seed=1,
        out=str(out),
    )


def _worker(rank, world_size, port, out):
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    context = distributed.init_from_env("cpu")
    try:
        result = Trainer(tiny_config(out), context=context).fit()
        torch.save(
            {
                "state_dict": result.model.state_dict(),
                "history": result.history,
                "files": sorted(os.listdir(out)),
            },
            os.path.join(os.path.dirname(out), f"rank{rank}.pt"),
        )
    finally:
        distributed.shutdown(context)


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key, value in rank0["state_dict"].items():
        assert torch.equal(value, rank1["state_dict"][key]), key
    history = rank0["history"]
    # 8 images split over 2 processes: 4 steps per epoch, every process sees its own half.
    assert [row["step"] for row in history] == [4, 8, 12]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # Losses and metrics are reduced over processes: every rank logs the same values.
    drop_time = [[v for k, v in row.items() if k != "seconds"] for row in history]
    assert drop_time == [[v for k, v in row.items() if k != "seconds"] for row in rank1["history"]]
    files = ["best.pt", "config.toml", "curves.png", "last.pt", "log.csv", "steps.csv"]
    assert sorted(os.listdir(out)) == files
    steps = (out / "steps.csv").read_text().splitlines()  # rank 0's, of the loss averaged over both
    assert [line.split(",")[0] for line in steps] == ["step", *map(str, range(1, 13))]
    saved = torch.load(out / "last.pt", weights_only=True)
    assert len(saved["rng"]) == 2  # one generator state per process, for an exact resume


def test_torchrun_cli(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "fcnseg",
        "train",
        "--arch",
        "fcn32s",
        "--widths",
        "4,8,8,16,16,32",
        "--train-images",
        "4",
        "--val-images",
        "2",
        "--image-size",
        "32",
        "40",
        "--loss",
        "mean",
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained fcn32s for 2 steps") == 1  # only rank 0 reports
    assert done.stderr.count("training from scratch (narrow widths") == 1  # and says what it does
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2


def test_single_process_context_is_a_no_op():
    context = distributed.Context()
    assert not context.enabled and context.is_main
    t = torch.ones(2)
    assert distributed.all_reduce_sum(t, context) is t
    assert distributed.any_true(True, context) and not distributed.any_true(False, context)
    assert distributed.all_gather_objects({"a": 1}, context) == [{"a": 1}]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cuda_request_without_cuda_is_an_error():
    with pytest.raises(ValueError, match="device 'cuda' is not available here: torch finds no CUDA device"):
        distributed.init_from_env("cuda")
