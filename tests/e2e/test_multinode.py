"""Multi-node launches on one machine: torchrun rendezvous with 2 "nodes" × 1 rank, and the deepspeed
per-node launcher for a 2-host hostfile. No code change between them and a single node."""

import base64
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOT, run_process_group, training_env

from trainer.distributed.world import free_port

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def train_args(tiny_llava, shards, run_dir):
    return [
        str(ROOT / "launch/train.py"),
        "--config",
        str(ROOT / "configs/demo.yaml"),
        f"model.path={tiny_llava}",
        f"data.train={shards / 'train'}",
        "data.val=",
        f"train.output_dir={run_dir}",
        "train.max_steps=6",
        "train.micro_batch_size=4",
        "data.num_workers=0",
        "eval.at_start=false",
    ]


def run_two_nodes(node_command, tiny_llava, color_shards, run_dir) -> None:
    """Start both "nodes" at once, wait for them, and check they trained together as one world of 2. Each node is
    its own process group: a timeout kills its launcher and ranks alike."""
    commands = [[*node_command(rank), *train_args(tiny_llava, color_shards, run_dir)] for rank in range(2)]
    with ThreadPoolExecutor(2) as pool:
        nodes = [pool.submit(run_process_group, command, training_env(), 300) for command in commands]
        results = [node.result() for node in nodes]
    assert [result.returncode for result in results] == [0, 0], results[0].stderr[-3000:] + results[1].stderr[-3000:]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6


def test_torchrun_rendezvous_two_nodes_one_rank_each(tiny_llava, color_shards, tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    run_two_nodes(
        lambda rank: [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--node_rank",
            str(rank),
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            endpoint,
            "--rdzv_id",
            "shardtune-test",
        ],
        tiny_llava,
        color_shards,
        tmp_path / "run",
    )


def test_deepspeed_per_node_launcher_two_nodes(tiny_llava, color_shards, tmp_path):
    """What `deepspeed --hostfile` runs on each host (over pdsh/ssh, absent here): deepspeed.launcher.launch
    with the hostfile's world info and the node's rank; two such processes make a 2-node job."""
    world_info = base64.urlsafe_b64encode(json.dumps({"node0": [0], "node1": [0]}).encode()).decode()
    port = str(free_port())
    run_two_nodes(
        lambda rank: [
            sys.executable,
            "-m",
            "deepspeed.launcher.launch",
            f"--world_info={world_info}",
            f"--node_rank={rank}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
        ],
        tiny_llava,
        color_shards,
        tmp_path / "run",
    )
