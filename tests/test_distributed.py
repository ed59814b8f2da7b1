"""Two CPU processes (gloo) give the same loss and gradients as one process over the same global batch."""

import torch
import torch.multiprocessing as mp

from helpers import dist as helper


def test_two_process_gcl_csft_equals_single_process(tmp_path):
    single_loss, single_grads = helper.loss_and_grads(helper.make_module(), 0, helper.N_PAIRS)
    out = tmp_path / "dist.pt"
    mp.spawn(helper.worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    result = torch.load(out)
    torch.testing.assert_close(result["loss"], single_loss, rtol=1e-5, atol=1e-6)
    assert set(result["grads"]) == set(single_grads)
    assert any("lora_A" in n for n in single_grads) and "loss.contrastive.log_scale" in single_grads
    for name, grad in single_grads.items():
        torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
