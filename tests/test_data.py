"""data_gpu: reading CIFAR-10 from disk (folder, archive, download, cache) and the augmentation."""
import hashlib
import math
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

import data_gpu
from data_gpu import DataError

ARCHIVE_MD5_OFFICIAL = 'c58f30108f718f92721af3b95e74349a'


# ---- the real data ---------------------------------------------------------------------------

def test_real_data_sizes_labels_and_published_means(cifar):
    assert cifar['train_x'].shape == (50000, 3, 32, 32) and cifar['train_x'].dtype == torch.uint8
    assert cifar['test_x'].shape == (10000, 3, 32, 32) and cifar['test_x'].dtype == torch.uint8
    assert torch.bincount(cifar['train_y'], minlength=10).tolist() == [5000] * 10
    assert torch.bincount(cifar['test_y'], minlength=10).tolist() == [1000] * 10
    x = cifar['train_x'].double()
    mean = x.mean(dim=(0, 2, 3))
    std = x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1)
    assert torch.allclose(mean, torch.tensor(data_gpu.MEAN, dtype=torch.float64), atol=0.01)
    assert torch.allclose(std, torch.tensor(data_gpu.STD, dtype=torch.float64), atol=0.01)


def test_normalized_real_training_set_has_zero_mean_unit_std(cifar):
    x = data_gpu.normalize(cifar['train_x'][:10000], torch.float32).double()
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.02
    assert (x.transpose(0, 1).reshape(3, -1).std(dim=1) - 1).abs().max() < 0.02


def test_the_batches_are_read_in_their_documented_layout_and_the_cache_holds_them(cifar_dir, cifar):
    """CIFAR-10's page: each row of `data` is one image, 1024 red values, then 1024 green, then 1024
    blue, each plane row-major. The other tests get the real data from its cache, so this one
    reads the batches themselves and checks the cache against them."""
    folder = os.path.join(cifar_dir, data_gpu.FOLDER)
    with open(os.path.join(folder, 'data_batch_1'), 'rb') as fh:
        raw = pickle.load(fh, encoding='bytes')
    x, y = data_gpu._read_batches(folder, ['data_batch_1'])
    image = np.asarray(raw[b'data'][7])
    for channel in range(3):
        assert torch.equal(x[7, channel], torch.from_numpy(image[1024 * channel:1024 * (channel + 1)].reshape(32, 32)))
    assert y.tolist() == raw[b'labels']
    assert torch.equal(cifar['train_x'][:10000], x) and torch.equal(cifar['train_y'][:10000], y)
    test_x, test_y = data_gpu._read_batches(folder, data_gpu.TEST_FILES)
    assert torch.equal(cifar['test_x'], test_x) and torch.equal(cifar['test_y'], test_y)


# ---- disk formats, cache and errors, on a small fake data set in the official layout --------

def write_fake_folder(root, seed=0):
    """Official layout, right counts; image n of class y is filled with 20*y + (n % 7)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, data_gpu.FOLDER)
    os.makedirs(folder, exist_ok=True)
    for name, n in [(f, 10000) for f in data_gpu.TRAIN_FILES + data_gpu.TEST_FILES]:
        labels = rng.integers(0, 10, n)
        data = (20 * labels[:, None] + (np.arange(n) % 7)[:, None]).astype(np.uint8).repeat(3072, axis=1)
        with open(os.path.join(folder, name), 'wb') as fh:
            pickle.dump({b'data': data, b'labels': labels.tolist()}, fh)
    return folder


def make_fake_archive(tmp_path):
    src = tmp_path / 'src'
    write_fake_folder(src)
    archive = tmp_path / data_gpu.ARCHIVE
    with tarfile.open(archive, 'w:gz', compresslevel=1) as tar:
        tar.add(src / data_gpu.FOLDER, arcname=data_gpu.FOLDER)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_folder_is_read_and_cached_then_cache_is_used(tmp_path, monkeypatch):
    write_fake_folder(tmp_path)
    first = data_gpu.load_cifar10(str(tmp_path), download=False, log=lambda m: None)
    assert (tmp_path / data_gpu.CACHE).is_file()
    assert first['train_x'].shape == (50000, 3, 32, 32)
    assert torch.equal(first['train_x'][:, 0, 0, 0], (20 * first["train_y"] + torch.arange(50000) % 10000 % 7).to(torch.uint8))

    def no_folder_reads(*a):
        raise AssertionError('the folder was read although a valid cache exists')
    monkeypatch.setattr(data_gpu, '_read_folder', no_folder_reads)
    second = data_gpu.load_cifar10(str(tmp_path), download=False, log=lambda m: None)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_stale_cache_is_rebuilt(tmp_path):
    write_fake_folder(tmp_path, seed=0)
    data_gpu.load_cifar10(str(tmp_path), download=False, log=lambda m: None)
    write_fake_folder(tmp_path, seed=1)  # new contents, new mtimes
    st = os.stat(tmp_path / data_gpu.FOLDER / 'test_batch')
    os.utime(tmp_path / data_gpu.FOLDER / 'test_batch', ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    messages = []
    data = data_gpu.load_cifar10(str(tmp_path), download=False, log=messages.append)
    assert any('stale' in m for m in messages)
    with open(tmp_path / data_gpu.FOLDER / 'test_batch', 'rb') as fh:
        labels = pickle.load(fh)[b'labels']
    assert data['test_y'].tolist() == labels


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'bitflip'])
def test_broken_cache_is_rebuilt(tmp_path, damage):
    write_fake_folder(tmp_path)
    good = data_gpu.load_cifar10(str(tmp_path), download=False, log=lambda m: None)
    cache = tmp_path / data_gpu.CACHE
    blob = cache.read_bytes()
    if damage == 'garbage':
        blob = b'not a cache'
    elif damage == 'truncated':
        blob = blob[:len(blob) // 2]
    else:  # a flipped bit deep inside the image data: only the CRC can see it
        blob = bytearray(blob)
        blob[len(blob) // 2] ^= 1
        blob = bytes(blob)
    cache.write_bytes(blob)
    messages = []
    data = data_gpu.load_cifar10(str(tmp_path), download=False, log=messages.append)
    assert any('broken' in m for m in messages)
    assert all(torch.equal(good[k], data[k]) for k in good)
    assert torch.load(cache, weights_only=True)['crc'] == data_gpu._crc(data)


def test_archive_is_md5_checked_and_extracted(tmp_path, monkeypatch):
    archive, md5 = make_fake_archive(tmp_path)
    monkeypatch.setattr(data_gpu, 'ARCHIVE_MD5', md5)
    data = data_gpu.load_cifar10(str(tmp_path), download=False, log=lambda m: None)
    assert (tmp_path / data_gpu.FOLDER / 'data_batch_1').is_file()
    assert data['test_x'].shape == (10000, 3, 32, 32)


def test_archive_with_wrong_md5_is_refused(tmp_path):
    make_fake_archive(tmp_path)  # its md5 is not the official one
    with pytest.raises(DataError, match='md5 .* expected c58f30108f718f92721af3b95e74349a') as err:
        data_gpu.load_cifar10(str(tmp_path), download=False)
    assert 'delete' not in str(err.value)
    assert (tmp_path / data_gpu.ARCHIVE).is_file(), 'the user\'s file must not be deleted'


def test_corrupt_archive_with_right_md5_gives_clear_error(tmp_path, monkeypatch):
    archive = tmp_path / data_gpu.ARCHIVE
    archive.write_bytes(b'\x1f\x8b' + os.urandom(5000))  # gzip magic, then noise
    monkeypatch.setattr(data_gpu, 'ARCHIVE_MD5', hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(DataError, match='is damaged: it could not be extracted') as err:
        data_gpu.load_cifar10(str(tmp_path), download=False)
    assert 'delete' not in str(err.value) and ARCHIVE_MD5_OFFICIAL in str(err.value)


def rewrite_batch(folder, name, change):
    path = os.path.join(folder, name)
    with open(path, 'rb') as fh:
        batch = pickle.load(fh)
    change(batch)
    with open(path, 'wb') as fh:
        pickle.dump(batch, fh)


@pytest.mark.parametrize('label', [10, -1])
def test_a_label_outside_0_to_9_is_refused(tmp_path, label):
    folder = write_fake_folder(tmp_path)
    rewrite_batch(folder, 'test_batch', lambda b: b[b'labels'].__setitem__(123, label))
    with pytest.raises(DataError, match='has labels outside 0..9'):
        data_gpu.load_cifar10(str(tmp_path), download=False)


@pytest.mark.parametrize('name', ['data_batch_5', 'test_batch'])
def test_a_batch_one_image_short_is_not_the_full_cifar10(tmp_path, name):
    folder = write_fake_folder(tmp_path)

    def drop_the_last_image(b):
        b[b'data'], b[b'labels'] = b[b'data'][:-1], b[b'labels'][:-1]
    rewrite_batch(folder, name, drop_the_last_image)
    with pytest.raises(DataError, match='it is not the full CIFAR-10'):
        data_gpu.load_cifar10(str(tmp_path), download=False)
    assert not os.path.exists(os.path.join(tmp_path, data_gpu.CACHE)), 'nothing is cached from a partial set'


def test_damaged_batch_file_gives_clear_error(tmp_path):
    folder = write_fake_folder(tmp_path)
    path = os.path.join(folder, 'data_batch_3')
    with open(path, 'r+b') as fh:
        fh.truncate(1000)
    with pytest.raises(DataError, match='data_batch_3 is damaged') as err:
        data_gpu.load_cifar10(str(tmp_path), download=False)
    assert 'delete' not in str(err.value), 'offline, deleting is losing the only copy'
    assert 'extracted from the official cifar-10-python.tar.gz' in str(err.value)


def test_missing_data_without_download_gives_clear_error(tmp_path):
    with pytest.raises(DataError, match='no CIFAR-10 in .*put cifar-10-python.tar.gz'):
        data_gpu.load_cifar10(str(tmp_path / 'nowhere'), download=False)


def test_failed_download_gives_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(data_gpu, 'URL', 'http://127.0.0.1:9/cifar-10-python.tar.gz')  # nothing listens
    with pytest.raises(DataError, match='could not download CIFAR-10 .*put cifar-10-python.tar.gz'):
        data_gpu.load_cifar10(str(tmp_path / 'd'), log=lambda m: None)
    assert not (tmp_path / 'd').exists(), 'the folder the download created is removed again'


def test_a_failed_download_removes_every_folder_it_created_and_no_other(tmp_path, monkeypatch):
    monkeypatch.setattr(data_gpu, 'URL', 'http://127.0.0.1:9/cifar-10-python.tar.gz')
    (tmp_path / 'kept').mkdir()
    for target in (tmp_path / 'a' / 'b' / 'c', tmp_path / 'kept'):
        with pytest.raises(DataError, match='could not download'):
            data_gpu.load_cifar10(str(target), log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['kept'] and not any((tmp_path / 'kept').iterdir())


def test_ctrl_c_during_the_download_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(url, part):
        open(part, 'wb').write(b'x' * 1000)
        raise KeyboardInterrupt
    monkeypatch.setattr(data_gpu, '_fetch', interrupted)
    with pytest.raises(KeyboardInterrupt):
        data_gpu.load_cifar10(str(tmp_path / 'new'), log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('failure', [RuntimeError('File cifar10_uint8.pt.tmp1 cannot be opened.'),
                                     PermissionError(13, 'Permission denied')])
def test_a_cache_that_cannot_be_written_trains_from_memory(tmp_path, monkeypatch, failure):
    """A read-only data folder: torch.save raises RuntimeError (its zip writer) or OSError."""
    write_fake_folder(tmp_path)

    def failing_save(obj, path):
        open(path, 'wb').write(b'half a cache')
        raise failure
    monkeypatch.setattr(data_gpu.torch, 'save', failing_save)
    messages = []
    data = data_gpu.load_cifar10(str(tmp_path), download=False, log=messages.append)
    assert data['train_x'].shape == (50000, 3, 32, 32)
    assert len(messages) == 1 and 'could not write the cache' in messages[0] and 'training from memory' in messages[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [data_gpu.FOLDER], 'no temporary file left behind'


def test_ctrl_c_while_the_cache_is_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    write_fake_folder(tmp_path)

    def interrupted_save(obj, path):
        open(path, 'wb').write(b'x' * 1000)
        raise KeyboardInterrupt
    monkeypatch.setattr(data_gpu.torch, 'save', interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        data_gpu.load_cifar10(str(tmp_path), download=False, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [data_gpu.FOLDER]


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_a_read_only_data_folder_trains_from_memory(tmp_path):
    write_fake_folder(tmp_path)
    os.chmod(tmp_path, 0o555)
    try:
        messages = []
        data_gpu.load_cifar10(str(tmp_path), download=False, log=messages.append)
        assert any('could not write the cache' in m for m in messages)
    finally:
        os.chmod(tmp_path, 0o755)


def test_data_dir_may_be_the_batches_folder_itself(tmp_path):
    folder = write_fake_folder(tmp_path)
    data = data_gpu.load_cifar10(folder, download=False, log=lambda m: None)
    assert data['train_x'].shape == (50000, 3, 32, 32)


def test_download_is_md5_checked_and_extracted(tmp_path, monkeypatch):
    archive, md5 = make_fake_archive(tmp_path)
    monkeypatch.setattr(data_gpu, 'URL', archive.as_uri())  # urllib reads file:// like http://
    monkeypatch.setattr(data_gpu, 'ARCHIVE_MD5', md5)
    data = data_gpu.load_cifar10(str(tmp_path / 'd'), log=lambda m: None)
    assert (tmp_path / 'd' / data_gpu.ARCHIVE).read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in (tmp_path / 'd').iterdir()) == sorted([data_gpu.ARCHIVE, data_gpu.FOLDER, data_gpu.CACHE])
    assert data['train_x'].shape == (50000, 3, 32, 32)


def test_a_download_copies_every_byte_past_its_first_chunks(tmp_path):
    """The fake archive fits in one chunk of the download's loop; the real one (163 MiB) does not."""
    payload = np.random.default_rng(0).integers(0, 256, 3 * 2**20 + 12345, dtype=np.uint8).tobytes()
    (tmp_path / 'blob').write_bytes(payload)
    data_gpu._fetch((tmp_path / 'blob').as_uri(), str(tmp_path / 'blob.part'))
    assert (tmp_path / 'blob.part').read_bytes() == payload


# ---- augmentation ------------------------------------------------------------------------------

def test_flip_twice_is_identity_and_flips_only_masked_images():
    x = torch.randn(6, 3, 32, 32)
    mask = torch.tensor([True, False, True, True, False, False])
    once = data_gpu.flip(x, mask)
    assert torch.equal(data_gpu.flip(once, mask), x)
    assert torch.equal(once[mask], x[mask].flip(3)) and torch.equal(once[~mask], x[~mask])


def test_crop_takes_the_window_at_each_offset():
    n = 5
    rows = torch.arange(40).view(1, 1, 40, 1).expand(n, 3, 40, 40)
    cols = torch.arange(40).view(1, 1, 1, 40).expand(n, 3, 40, 40)
    padded = (100 * rows + cols).float()  # each pixel encodes its own position
    dy, dx = torch.tensor([0, 8, 3, 8, 0]), torch.tensor([0, 8, 5, 0, 7])
    out = data_gpu.crop(padded, dy, dx, 32)
    assert out.shape == (n, 3, 32, 32)
    for i in range(n):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32])


def test_random_crops_stay_inside_and_cover_every_offset():
    n, pad = 4000, 4
    rows = torch.arange(40).view(1, 1, 40, 1).expand(n, 1, 40, 40)
    cols = torch.arange(40).view(1, 1, 1, 40).expand(n, 1, 40, 40)
    padded = (100 * rows + cols).float()
    out = data_gpu.random_crop(padded, 32, torch.Generator().manual_seed(0))
    assert out.shape == (n, 1, 32, 32)
    dy, dx = (out[:, 0, 0, 0] // 100).long(), (out[:, 0, 0, 0] % 100).long()
    assert dy.min() >= 0 and dy.max() <= 2 * pad and dx.min() >= 0 and dx.max() <= 2 * pad
    assert len(set(zip(dy.tolist(), dx.tolist()))) == (2 * pad + 1) ** 2
    expected = 100 * (dy.view(n, 1, 1) + torch.arange(32).view(1, 32, 1)) + dx.view(n, 1, 1) + torch.arange(32)
    assert torch.equal(out[:, 0], expected.float())


@pytest.mark.parametrize('cy, cx', [(16, 16), (0, 0), (31, 31), (2, 30), (4, 4), (3, 28)])
def test_cutout_zeroes_exactly_the_clipped_box(cy, cx):
    size = 8
    x = torch.rand(1, 3, 32, 32) + 1  # no zeros before
    out = data_gpu.apply_cutout(x, torch.tensor([cy]), torch.tensor([cx]), size)
    expected = torch.zeros(32, 32, dtype=torch.bool)
    for r in range(32):
        for c in range(32):
            expected[r, c] = cy - 4 <= r < cy + 4 and cx - 4 <= c < cx + 4
    assert torch.equal(out[0] == 0, expected.expand(3, 32, 32))
    assert torch.equal(out[0][~expected.expand(3, 32, 32)], x[0][~expected.expand(3, 32, 32)])


def test_random_cutout_boxes_are_squares_clipped_at_borders():
    x = torch.ones(3000, 1, 32, 32)
    out = data_gpu.random_cutout(x, 8, torch.Generator().manual_seed(1))
    zeroed = (out == 0)[:, 0]
    h, w = zeroed.any(2).sum(1), zeroed.any(1).sum(1)
    assert torch.equal(zeroed.sum((1, 2)), h * w)  # a full rectangle
    assert h.min() == 4 and h.max() == 8 and w.min() == 4 and w.max() == 8


def encoded_data(n_train=1000, n_test=200):
    """Images whose every pixel is 20 * label, so a label can be read back off its image."""
    g = torch.Generator().manual_seed(0)
    train_y = torch.randint(0, 10, (n_train,), generator=g)
    test_y = torch.randint(0, 10, (n_test,), generator=g)
    return {'train_x': (20 * train_y).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous(),
            'train_y': train_y,
            'test_x': (20 * test_y).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous(),
            'test_y': test_y}


def decode_labels(x):
    """Per image: median over pixels of channel 0, back in 0..255 units, divided by 20."""
    pixels = x[:, 0].float() * data_gpu.STD[0] + data_gpu.MEAN[0]
    return (pixels.flatten(1).median(1).values / 20).round().long()


def test_labels_stay_with_their_images_through_shuffle_and_augmentation():
    ds = data_gpu.DeviceCIFAR10(encoded_data(), 'cpu', seed=3)
    batches = list(ds.train_batches(128))
    assert len(batches) == 1000 // 128
    seen = torch.cat([y for _, y in batches])
    assert not torch.equal(seen, encoded_data()['train_y'][:len(seen)]), 'not shuffled'
    for x, y in batches:
        assert x.shape == (128, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(decode_labels(x), y)
    for x, y in ds.test_batches(64):
        assert torch.equal(decode_labels(x), y)


def test_an_epoch_holds_every_full_batch_and_drops_only_the_partial_one(cifar):
    for n_train, batch_size in ((1000, 125), (1000, 128), (1000, 1000)):
        ds = data_gpu.DeviceCIFAR10(cifar, 'cpu', n_train=n_train, n_test=10, seed=0)
        sizes = [len(y) for _, y in ds.train_batches(batch_size)]
        assert sizes == [batch_size] * (n_train // batch_size), (n_train, batch_size)


def test_the_crop_pad_reflects_the_image_without_repeating_its_edge(cifar):
    """Myrtle pads by reflection: row -1 is row 1, row -4 is row 4 (zero padding would put black
    bars in the crops; replicate padding would repeat row 0)."""
    ds = data_gpu.DeviceCIFAR10(cifar, 'cpu', n_train=8, n_test=10, seed=0)
    images = data_gpu.normalize(cifar['train_x'][:8], torch.float32)
    padded = ds.train_padded
    assert padded.shape[-2:] == (40, 40)
    torch.testing.assert_close(padded[:, :, 4:36, 4:36], images)
    for d in range(1, 5):
        torch.testing.assert_close(padded[:, :, 4 - d, 4:36], images[:, :, d, :])
        torch.testing.assert_close(padded[:, :, 35 + d, 4:36], images[:, :, 31 - d, :])
        torch.testing.assert_close(padded[:, :, 4:36, 4 - d], images[:, :, :, d])


def test_same_seed_same_batches_other_seed_other_batches(cifar):
    def epoch(seed):
        ds = data_gpu.DeviceCIFAR10(cifar, 'cpu', n_train=2000, n_test=100, seed=seed)
        return list(ds.train_batches(500))
    a, b, c = epoch(7), epoch(7), epoch(8)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])


def test_consecutive_epochs_differ_and_reseed_repeats_them(cifar):
    ds = data_gpu.DeviceCIFAR10(cifar, 'cpu', n_train=1000, n_test=100, seed=0)
    first, second = ds.augmented_epoch()[0], ds.augmented_epoch()[0]
    assert not torch.equal(first, second)
    ds.reseed(0)
    assert torch.equal(ds.augmented_epoch()[0], first)


def test_without_augmentation_an_epoch_is_a_permutation_of_the_normalized_set(cifar):
    ds = data_gpu.DeviceCIFAR10(cifar, 'cpu', n_train=600, n_test=10, flip=False, crop_pad=0, cutout=0)
    x, y = ds.augmented_epoch()
    ref = data_gpu.normalize(cifar['train_x'][:600], torch.float32)
    w = torch.randn(3 * 32 * 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    order = torch.argsort(x.flatten(1).double() @ w)  # a random projection: distinct images, distinct keys
    ref_order = torch.argsort(ref.flatten(1).double() @ w)
    assert torch.equal(x[order], ref[ref_order]) and torch.equal(y[order], cifar['train_y'][:600][ref_order])


def test_fp16_data_is_fp16_channels_last(cifar):
    ds = data_gpu.DeviceCIFAR10(cifar, 'cpu', torch.float16, n_train=256, n_test=100)
    x, _ = next(ds.train_batches(128))
    assert x.dtype == torch.float16 and x.is_contiguous(memory_format=torch.channels_last)
    assert ds.test_x.dtype == torch.float16 and ds.test_x.is_contiguous(memory_format=torch.channels_last)


def test_cutout_count_draws_that_many_boxes():
    data = encoded_data(n_train=500, n_test=10)
    data['train_x'] = torch.full_like(data['train_x'], 255)  # far from the mean: no pixel normalises to 0
    zeroed = {}
    for count in (1, 3):
        ds = data_gpu.DeviceCIFAR10(data, 'cpu', flip=False, crop_pad=0, cutout=8, cutout_count=count, seed=5)
        x, _ = ds.augmented_epoch()
        zeroed[count] = (x[:, 0] == 0).sum((1, 2)).float()
    assert zeroed[1].max() <= 64 and zeroed[3].max() <= 192
    assert zeroed[3].mean() > 2 * zeroed[1].mean()  # overlaps and borders keep it under 3x


# ---- rates and ranges of the augmentation, on many draws -----------------------------------------
# Bounds are 5 standard deviations of the binomial counts: a correct implementation fails one of
# them about once in a million runs; a wrong constant (p = 0.4 instead of 0.5, an offset range one
# short) moves the counts by tens of standard deviations.

N_DRAWS = 40000


def within_5_sigma(count, n, p):
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def test_random_flip_mirrors_half_the_images():
    """Would catch a wrong probability (< 0.4 or > 0.6 is ~20 sigma off) or a flip along the wrong axis."""
    x = torch.arange(32.0).view(1, 1, 1, 32).expand(N_DRAWS, 1, 2, 32)
    out = data_gpu.random_flip(x, torch.Generator().manual_seed(0))
    flipped = out[:, 0, 0, 0] == 31
    assert torch.equal(out[flipped], x[flipped].flip(3)) and torch.equal(out[~flipped], x[~flipped])
    assert within_5_sigma(int(flipped.sum()), N_DRAWS, 0.5)


def test_crop_offsets_are_uniform_over_all_nine_positions():
    """Each of the 9 offsets (0..8 for pad 4) per axis, at 1/9 each: would catch randint's upper bound
    one short (8 never drawn) or a range off by one."""
    n = N_DRAWS
    padded = (100 * torch.arange(40).view(1, 1, 40, 1) + torch.arange(40).view(1, 1, 1, 40)).float().expand(n, 1, 40, 40)
    out = data_gpu.random_crop(padded, 32, torch.Generator().manual_seed(1))
    dy, dx = (out[:, 0, 0, 0] // 100).long(), (out[:, 0, 0, 0] % 100).long()
    for offsets in (dy, dx):
        counts = torch.bincount(offsets, minlength=9)
        assert len(counts) == 9 and all(within_5_sigma(int(c), n, 1 / 9) for c in counts), counts.tolist()


def test_cutout_centres_cover_every_row_and_column_uniformly():
    """Centres at 0..31 in both axes, 1/32 each, the last row and column included: would catch
    randint(0, h - 1) (never the last row) or centres restricted to the inside."""
    n = N_DRAWS
    out = data_gpu.random_cutout(torch.ones(n, 1, 32, 32), 1, torch.Generator().manual_seed(2))
    zero = (out[:, 0] == 0).nonzero()  # a 1x1 box: the zeroed pixel is the centre
    assert len(zero) == n
    for axis in (1, 2):
        counts = torch.bincount(zero[:, axis], minlength=32)
        assert len(counts) == 32 and counts[31] > 0 and all(within_5_sigma(int(c), n, 1 / 32) for c in counts)


def test_an_augmented_epoch_flips_about_half_of_the_real_images(cifar):
    """The pipeline, not just the function: with crop and Cutout off, an image comes out either as it
    is or mirrored, about half of each, and every label stays with its image."""
    data = data_gpu.DeviceCIFAR10(cifar, 'cpu', torch.float32, n_train=20000, n_test=10, crop_pad=0, cutout=0)
    x, y = data.augmented_epoch()
    plain = data_gpu.normalize(cifar['train_x'][:20000], torch.float32)
    order = {}
    flat = plain.flatten(1)
    keys = {hash(row.numpy().tobytes()): i for i, row in enumerate(flat)}
    flips = 0
    for out_row, label in zip(x[:5000], y[:5000]):
        i = keys.get(hash(out_row.contiguous().flatten().numpy().tobytes()))
        if i is None:
            i = keys[hash(out_row.flip(2).contiguous().flatten().numpy().tobytes())]
            flips += 1
        assert cifar['train_y'][i] == label
        order[i] = True
    assert len(order) == 5000 and within_5_sigma(flips, 5000, 0.5)


def test_alternating_flip_mirrors_each_image_on_every_other_epoch_exactly():
    """--flip 2 (airbench): random in the first epoch, then each image flipped exactly when it was
    not flipped the epoch before. Would catch a mask not indexed by the shuffled order, a mask
    redrawn each epoch, or a counter not reset by reseed."""
    n = 600
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    x[:, 0, 0, 0] = (torch.arange(n) // 256).to(torch.uint8)  # the image's index, in its top-left pixel
    x[:, 1, 0, 0] = (torch.arange(n) % 256).to(torch.uint8)
    x[:, 2, 0, 0] = 255                                       # a marker: top-left unless mirrored
    data = data_gpu.DeviceCIFAR10({'train_x': x, 'train_y': torch.arange(n) % 10, 'test_x': x[:10],
                                   'test_y': torch.zeros(10, dtype=torch.int64)},
                                  'cpu', torch.float64, flip=2, crop_pad=0, cutout=0, channels_last=False)
    mean, std = torch.tensor(data_gpu.MEAN, dtype=torch.float64), torch.tensor(data_gpu.STD, dtype=torch.float64)

    def flips_by_index():
        images, labels = data.augmented_epoch()
        raw = (images * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)).round()
        mirrored = raw[:, 2, 0, 31] == 255
        corner = torch.where(mirrored, 31, 0)
        index = (raw[torch.arange(n), 0, 0, corner] * 256 + raw[torch.arange(n), 1, 0, corner]).long()
        assert torch.equal(labels, index % 10) and sorted(index.tolist()) == list(range(n))
        out = torch.zeros(n, dtype=torch.bool)
        out[index] = mirrored
        return out

    for seed in (0, 1):
        data.reseed(seed)
        epochs = [flips_by_index() for _ in range(4)]
        assert within_5_sigma(int(epochs[0].sum()), n, 0.5)
        for before, after in zip(epochs, epochs[1:]):
            assert torch.equal(after, ~before)
        if seed == 0:
            first = epochs[0]
        else:
            assert not torch.equal(epochs[0], first), 'a new seed draws new flips'
