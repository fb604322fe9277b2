"""--compile on the CPU (inductor's C++ backend): the same losses as eager, BLF's Triton kernels
around the compiled network, and no graph compiled inside the clock once warm_up has run."""
import pytest
import torch

import blf_step
import cli
import data_gpu
import train
from conftest import recipe_hyp


def test_a_compiled_run_matches_eager_and_compiles_nothing_inside_the_clock(cifar):
    data = data_gpu.DeviceCIFAR10(cifar, 'cpu', torch.float32, n_train=512, n_test=100)
    h = {**cli.hyp, 'width': 0.0625, 'batch_size': 128, 'epochs': 1, 'eval_batch_size': 100, 'precision': 'fp32',
         'tta': 1, 'blf': 0.8, 'blf_mode': 'mask', 'blf_start_epoch': 1}
    backend = blf_step.blf_backend('triton', 'cpu')
    rows, results = {}, {}
    for compiled in (0, 1):
        hc = {**h, 'compile': compiled}
        train.warm_up(hc, data, 'cpu', torch.float32, backend)
        graphs = train.compiled_graphs()
        assert graphs > 0 or not compiled
        rows[compiled] = []
        results[compiled] = train.train_run(hc, data, 0, 'cpu', torch.float32, rows[compiled].append, backend, log=print)
        assert train.compiled_graphs() == graphs, 'a graph was compiled inside the clock'
    eager, compiled = rows[0][0], rows[1][0]
    for key in ('train_loss', 'kept', 'kept_loss', 'test_loss'):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-3), key
    assert results[1]['test_loss'] == pytest.approx(results[0]['test_loss'], rel=1e-3)


@pytest.mark.gpu
@pytest.mark.compile
@pytest.mark.parametrize('recipe', ['myrtle-tricks', 'airbench94-muon'])
def test_gpu_compiled_recipe_epoch_with_blf_has_no_sync_and_no_compile_in_the_clock(cifar, recipe):
    """On CUDA, after warm-up: a compiled epoch of each new recipe with BLF compact (Triton kernels)
    under set_sync_debug_mode('error'), and not one graph compiled during it."""
    import recipes
    import schedules
    h = recipe_hyp(recipe, '--compile', 1, '--blf', 0.9, '--blf-start-epoch', 1, '--precision', 'fp16')
    h['blf_bucket'] = h['batch_size'] // 2  # two compact sizes: each size is a graph, and compiling is minutes
    data = data_gpu.DeviceCIFAR10(cifar, 'cuda', torch.float16, n_train=10240, n_test=1000, flip=h['flip'],
                                  crop_pad=h['crop_pad'], cutout=h['cutout'])
    backend = blf_step.blf_backend('triton', 'cuda')
    train.warm_up(h, data, 'cuda', torch.float16, backend)
    graphs = train.compiled_graphs()
    parts = train.run_parts(h, 'cuda', torch.float16, 0, backend)
    train.init_weights_from_data(parts, data)
    settings = schedules.step_settings(h, data.n_train // h['batch_size'])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        totals = train.train_epoch(parts['model'], parts['opt'], data.train_batches(h['batch_size']), settings, h,
                                   parts['blf'], parts['ema'], parts['scaler'], parts['mixer'], parts['lookahead'])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert totals['steps'] == data.n_train // h['batch_size'] and 0 < totals['kept'].item() <= totals['count'].item()
    assert train.compiled_graphs() == graphs, 'a graph was compiled inside the clock'
