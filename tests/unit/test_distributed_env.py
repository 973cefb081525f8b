"""Rank discovery on hand-made environments: torchrun, deepspeed launcher, SLURM, single process."""

import pytest

from trainer.distributed.world import expand_nodelist, export_env, port_for_job, world_from_env


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node1", ["node1"]),
        ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
        ("a[1-2],b3,c[09-10]", ["a1", "a2", "b3", "c09", "c10"]),
        ("rack1-n[8-9]-ib", ["rack1-n8-ib", "rack1-n9-ib"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_torchrun_environment():
    env = {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29400",
        "TORCHELASTIC_RUN_ID": "x",
    }
    info = world_from_env(env)
    assert (info.rank, info.local_rank, info.world_size, info.local_world_size) == (3, 1, 4, 2)
    assert (info.master_addr, info.master_port, info.launcher) == ("10.0.0.1", 29400, "torchrun")
    assert not info.is_main


def test_slurm_environment():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "8",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NODELIST": "gpu[01-04,07]",
        "SLURM_JOB_ID": "123456",
    }
    info = world_from_env(env)
    assert (info.rank, info.local_rank, info.world_size, info.local_world_size) == (5, 1, 8, 2)
    assert info.master_addr == "gpu01" and info.master_port == port_for_job("123456")
    assert info.launcher == "slurm"


def test_torch_variables_win_over_slurm():
    env = {"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "n1"}
    assert world_from_env(env).world_size == 2


def test_single_process_defaults():
    info = world_from_env({})
    assert (info.rank, info.world_size, info.launcher) == (0, 1, "single")


def test_inconsistent_environment_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match="rank 4 not in"):
        world_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="SLURM_NTASKS"):
        world_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "x", "SLURM_JOB_NODELIST": "n1"})


def test_export_env_round_trips():
    info = world_from_env(
        {
            "SLURM_PROCID": "1",
            "SLURM_LOCALID": "1",
            "SLURM_NTASKS": "2",
            "SLURM_TASKS_PER_NODE": "2(x1)",
            "SLURM_JOB_NODELIST": "n[1-2]",
            "SLURM_JOB_ID": "7",
        }
    )
    env = {}
    export_env(info, env)
    again = world_from_env(env)
    assert (again.rank, again.world_size, again.master_addr, again.master_port) == (1, 2, "n1", info.master_port)
