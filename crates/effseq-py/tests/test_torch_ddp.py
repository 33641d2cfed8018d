"""effseq.torch inside torch.distributed DistributedDataParallel on CPU: two processes (gloo, 127.0.0.1 only) each
train on half of every batch; their averaged gradients must give exactly the weights of one process training on the
whole batch (the kernels' gradients are per-sample sums, so sharding must not change them)."""

import socket

import pytest


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_with_two_processes_matches_one_process(torch, tmp_path):
    import torch.multiprocessing as mp

    import ddp_worker

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    out = tmp_path / "ddp.pt"
    mp.spawn(ddp_worker.worker, args=(free_port(), str(out)), nprocs=ddp_worker.WORLD, join=True)
    distributed = torch.load(out)
    single = ddp_worker.single_process()
    initial = ddp_worker.initial_state()
    for name, value in single.items():
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        torch.testing.assert_close(distributed[name], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
