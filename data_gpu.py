"""CIFAR-10 from disk to uint8 tensors on the device, and per-epoch augmentation on the device.

Disk layout under --data-dir (default data/), tried in this order:
  cifar10_uint8.pt        our cache: uint8 tensors + a CRC, rebuilt when stale or broken
  cifar-10-batches-py/    the official Python layout (read as is, no md5: it may be a re-pack)
  cifar-10-python.tar.gz  the official archive (md5-checked, then extracted)
  (nothing)               the archive is downloaded from the official source, md5-checked, extracted

Per epoch, on the device and vectorised over the whole training set: shuffle, pad-and-random-crop
(reflect pad 4, as Myrtle), random horizontal flip, Cutout (8x8, clipped at the borders). Fixed
shapes, no host syncs, every random draw from one device generator, so a seed fixes the batches.
"""
import hashlib
import math
import os
import pickle
import random
import sys
import tarfile
import time
import urllib.request
import zlib

import numpy as np
import torch
import torch.nn.functional as F

URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
ARCHIVE = 'cifar-10-python.tar.gz'
ARCHIVE_MD5 = 'c58f30108f718f92721af3b95e74349a'
FOLDER = 'cifar-10-batches-py'
CACHE = 'cifar10_uint8.pt'
CACHE_VERSION = 1
TRAIN_FILES = [f'data_batch_{i}' for i in range(1, 6)]
TEST_FILES = ['test_batch']
# Per-channel statistics of the training set in 0..255 units, as published for CIFAR-10.
MEAN = (125.307, 122.950, 113.865)
STD = (62.993, 62.089, 66.705)


class DataError(Exception):
    """Something about the data on disk that the user can fix; the message says how."""


# ----------------------------------------------------------------------------------------------
# Disk -> uint8 tensors

GOOD_COPY = (f'the official {ARCHIVE} (md5 {ARCHIVE_MD5}) from {URL}, or a copy of it from any '
             f'machine that has one')


def load_cifar10(data_dir, download=True, log=print):
    """Return {'train_x': uint8 [50000,3,32,32], 'train_y': int64 [50000], 'test_x', 'test_y'} on the CPU.

    data_dir may also be the cifar-10-batches-py folder itself (any folder holding data_batch_1)."""
    if os.path.isfile(os.path.join(data_dir, TRAIN_FILES[0])):
        folder = data_dir  # pointed at the batches folder itself: read it there, cache beside the batches
    else:
        folder = os.path.join(data_dir, FOLDER)
    archive = os.path.join(data_dir, ARCHIVE)
    cache = os.path.join(data_dir, CACHE)

    if os.path.isdir(folder):
        source = _folder_signature(folder)
    elif os.path.isfile(archive):
        source = _file_signature(archive)
    else:
        source = None

    data = _read_cache(cache, source, log)
    if data is not None:
        return data

    if not os.path.isdir(folder):
        if not os.path.isfile(archive):
            if not download:
                raise DataError(f'no CIFAR-10 in {data_dir}: put {ARCHIVE} or the extracted {FOLDER}/ there')
            _download(URL, archive, log)
        _check_md5(archive)
        _extract(archive, data_dir)
        if not os.path.isdir(folder):
            raise DataError(f'{archive} holds no {FOLDER}/ folder: it is not the CIFAR-10 python archive')
        source = _folder_signature(folder)

    data = _read_folder(folder)
    _write_cache(cache, data, source, log)
    return data


def _folder_signature(folder):
    sig = []
    for name in TRAIN_FILES + TEST_FILES:
        path = os.path.join(folder, name)
        st = os.stat(path) if os.path.isfile(path) else None
        sig.append((name, st.st_size if st else -1, st.st_mtime_ns if st else -1))
    return sig


def _file_signature(path):
    st = os.stat(path)
    return [(os.path.basename(path), st.st_size, st.st_mtime_ns)]


def _read_batches(folder, names):
    xs, ys = [], []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError(f'{path} is missing: {folder} is incomplete; extract a complete one from {GOOD_COPY}')
        try:
            with open(path, 'rb') as fh:
                d = pickle.load(fh, encoding='bytes')
            x = torch.from_numpy(np.asarray(d[b'data'], dtype=np.uint8)).reshape(-1, 3, 32, 32)
            y = torch.tensor(d[b'labels'], dtype=torch.int64)
        except Exception as e:  # any unpickling or shape problem means the file is damaged
            raise DataError(f'{path} is damaged (not a readable CIFAR-10 batch: {type(e).__name__}); '
                            f'replace {folder} with one extracted from {GOOD_COPY}') from None
        if len(x) != len(y):
            raise DataError(f'{path} is damaged ({len(x)} images but {len(y)} labels); replace {folder} with one '
                            f'extracted from {GOOD_COPY}')
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _read_folder(folder):
    train_x, train_y = _read_batches(folder, TRAIN_FILES)
    test_x, test_y = _read_batches(folder, TEST_FILES)
    if len(train_x) != 50000 or len(test_x) != 10000:
        raise DataError(f'{folder} holds {len(train_x)} train and {len(test_x)} test images, not 50000 and 10000: '
                        f'it is not the full CIFAR-10; replace it with one extracted from {GOOD_COPY}')
    for y in (train_y, test_y):
        if int(y.min()) < 0 or int(y.max()) > 9:
            raise DataError(f'{folder} has labels outside 0..9: it is damaged; replace it with one extracted '
                            f'from {GOOD_COPY}')
    return {'train_x': train_x, 'train_y': train_y, 'test_x': test_x, 'test_y': test_y}


def _crc(data):
    crc = 0
    for key in sorted(data):
        crc = zlib.crc32(data[key].contiguous().numpy().tobytes(), crc)
    return crc


def _read_cache(cache, source, log):
    """The cached tensors, or None when there is no cache or it is stale or broken."""
    if not os.path.isfile(cache):
        return None
    try:
        blob = torch.load(cache, weights_only=True)
        data = {k: blob[k] for k in ('train_x', 'train_y', 'test_x', 'test_y')}
        ok = (blob['version'] == CACHE_VERSION and _crc(data) == blob['crc']
              and tuple(data['train_x'].shape) == (50000, 3, 32, 32)
              and tuple(data['test_x'].shape) == (10000, 3, 32, 32))
    except Exception:
        ok = False
    if not ok:
        log(f'cache {cache} is broken or from another version; rebuilding it')
        return None
    # The source may be gone (only the cache kept): then the CRC above is all we can check.
    if source is not None and [tuple(s) for s in blob['source']] != [tuple(s) for s in source]:
        log(f'cache {cache} is stale (the data beside it changed); rebuilding it')
        return None
    return data


def _write_cache(cache, data, source, log):
    """Write the cache through a temporary file; whatever stops that (a read-only folder: torch.save
    raises OSError or RuntimeError; a full disk; Ctrl-C) leaves no temporary file behind. A cache
    that cannot be written is fine: the data is already in memory, only the next start is slower."""
    tmp = f'{cache}.tmp{os.getpid()}'
    try:
        torch.save({'version': CACHE_VERSION, 'source': source, 'crc': _crc(data), **data}, tmp)
        os.replace(tmp, cache)
    except (OSError, RuntimeError) as e:
        log(f'note: could not write the cache {cache} ({getattr(e, "strerror", None) or str(e).splitlines()[0]}); '
            f'training from memory')
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _download(url, dest, log):
    """Download to dest + '.part', then rename. On any failure (offline, Ctrl-C) the partial file
    and the folders this call created are removed again."""
    folder = os.path.abspath(os.path.dirname(dest) or '.')
    created = []  # the folders makedirs will create, deepest last
    parent = folder
    while not os.path.exists(parent):
        created.insert(0, parent)
        parent = os.path.dirname(parent)
    part = dest + '.part'
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DataError(f'cannot create {folder} for the download ({e.strerror}); give another --data-dir') from None
    log(f'downloading {url} -> {dest}')
    try:
        _fetch(url, part)
    except BaseException as e:
        if os.path.exists(part):
            os.remove(part)
        for path in reversed(created):
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
        if isinstance(e, (OSError, ValueError)):  # URLError and timeouts are OSErrors
            reason = getattr(e, 'reason', None) or e
            raise DataError(f'could not download CIFAR-10 ({reason}); put {ARCHIVE} '
                            f'or the extracted {FOLDER}/ into {os.path.dirname(dest) or "."}') from None
        raise
    os.replace(part, dest)


def _fetch(url, part):
    with urllib.request.urlopen(url, timeout=30) as resp, open(part, 'wb') as out:
        total = int(resp.headers.get('Content-Length') or 0)
        done, last = 0, 0.0
        while chunk := resp.read(1 << 20):
            out.write(chunk)
            done += len(chunk)
            if time.time() - last > 0.5 or done == total:
                last = time.time()
                pct = f' {100 * done / total:5.1f}%' if total else ''
                print(f'\r  {done / 2**20:7.1f} MiB{pct}', end='', file=sys.stderr, flush=True)
    print(file=sys.stderr)


def _check_md5(archive):
    h = hashlib.md5()
    with open(archive, 'rb') as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    if h.hexdigest() != ARCHIVE_MD5:
        raise DataError(f'{archive} is damaged or not CIFAR-10 (md5 {h.hexdigest()}, expected {ARCHIVE_MD5}); '
                        f'put {GOOD_COPY} in its place (online, moving it aside lets train.py download one)')


def _extract(archive, data_dir):
    try:
        with tarfile.open(archive, 'r:gz') as tar:
            if hasattr(tarfile, 'data_filter'):  # refuses absolute paths and links out of data_dir
                tar.extractall(data_dir, filter='data')
            else:
                tar.extractall(data_dir)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f'{archive} is damaged: it could not be extracted ({type(e).__name__}); put {GOOD_COPY} '
                        f'in its place (online, moving it aside lets train.py download one)') from None


# ----------------------------------------------------------------------------------------------
# Augmentation, vectorised over a whole batch of images [N, C, H, W] on any device

def normalize(images_u8, dtype):
    mean = torch.tensor(MEAN, device=images_u8.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images_u8.device).view(1, 3, 1, 1)
    return ((images_u8.float() - mean) / std).to(dtype)


def crop(padded, dy, dx, size):
    """out[n, :, r, c] = padded[n, :, dy[n] + r, dx[n] + c]: one gather for rows, one for columns."""
    n, ch, h, w = padded.shape
    rows = (dy.view(n, 1, 1, 1) + torch.arange(size, device=padded.device).view(1, 1, size, 1))
    out = padded.gather(2, rows.expand(n, ch, size, w))
    cols = (dx.view(n, 1, 1, 1) + torch.arange(size, device=padded.device).view(1, 1, 1, size))
    return out.gather(3, cols.expand(n, ch, size, size))


def random_crop(padded, size, gen):
    n, max_offset = padded.shape[0], padded.shape[2] - size
    dy = torch.randint(0, max_offset + 1, (n,), device=padded.device, generator=gen)
    dx = torch.randint(0, max_offset + 1, (n,), device=padded.device, generator=gen)
    return crop(padded, dy, dx, size)


def flip(images, mask):
    """Mirror left-right the images whose mask entry is True."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(3), images)


def random_flip(images, gen):
    return flip(images, torch.rand(images.shape[0], device=images.device, generator=gen) < 0.5)


def apply_cutout(images, cy, cx, size):
    """Zero a size x size box centred at (cy[n], cx[n]) in image n, clipped at the borders.

    The box covers rows cy - size//2 .. cy - size//2 + size - 1 (same for columns). Zero is the
    mean colour, since images are normalised first (as Myrtle does)."""
    n, _, h, w = images.shape
    top, left = (cy - size // 2).view(n, 1), (cx - size // 2).view(n, 1)
    r = torch.arange(h, device=images.device).view(1, h)
    c = torch.arange(w, device=images.device).view(1, w)
    in_rows = (r >= top) & (r < top + size)
    in_cols = (c >= left) & (c < left + size)
    box = in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w)
    return images.masked_fill(box, 0)


def random_cutout(images, size, gen):
    n, _, h, w = images.shape
    cy = torch.randint(0, h, (n,), device=images.device, generator=gen)
    cx = torch.randint(0, w, (n,), device=images.device, generator=gen)
    return apply_cutout(images, cy, cx, size)


# ----------------------------------------------------------------------------------------------
# The data set on the device

class DeviceCIFAR10:
    """Train and test sets living on one device, normalised once; augmented epochs drawn from a seed.

    train_batches(batch_size) augments the whole training set at once (one pass of a few big kernels
    rather than many per-batch ones) and yields fixed-size batches; the last partial batch is
    dropped so every step has the same shape (a reshuffle each epoch drops different images).
    """

    def __init__(self, data, device, dtype=torch.float32, n_train=None, n_test=None,
                 flip=True, crop_pad=4, cutout=8, cutout_count=1, channels_last=True, seed=0):
        self.device, self.dtype = torch.device(device), dtype
        self.flip, self.crop_pad, self.cutout, self.cutout_count = flip, crop_pad, cutout, cutout_count
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        train_x, train_y = data['train_x'][:n_train], data['train_y'][:n_train]
        test_x, test_y = data['test_x'][:n_test], data['test_y'][:n_test]
        x = normalize(train_x.to(self.device), dtype)
        # Pad once (reflect, as Myrtle); each epoch then only crops.
        self.train_padded = F.pad(x, (crop_pad,) * 4, mode='reflect') if crop_pad else x
        self.train_y = train_y.to(self.device)
        self.test_x = normalize(test_x.to(self.device), dtype).contiguous(memory_format=self.memory_format)
        self.test_y = test_y.to(self.device)
        self.gen = torch.Generator(device=self.device)
        self.reseed(seed)

    @property
    def n_train(self):
        return len(self.train_y)

    def first_images(self, n):
        """The first n training images as they are (normalised, not augmented), e.g. for whitening."""
        p = self.crop_pad
        return self.train_padded[:n, :, p:p + 32, p:p + 32] if p else self.train_padded[:n]

    def reseed(self, seed):
        self.gen.manual_seed(seed)
        self.epoch, self.flip_mask = 0, None

    def augmented_epoch(self):
        """The whole training set, shuffled and augmented: (images [N,3,32,32], labels [N]).

        flip = 1: each image mirrored with probability 1/2, drawn afresh each epoch. flip = 2,
        airbench's alternating flip: the first epoch draws each image's flip at random, and every
        later epoch mirrors exactly the images the epoch before did not, so every image is seen both
        ways in any two consecutive epochs."""
        perm = torch.randperm(self.n_train, device=self.device, generator=self.gen)
        x, y = self.train_padded[perm], self.train_y[perm]
        if self.crop_pad:
            x = random_crop(x, 32, self.gen)
        if self.flip == 2:
            if self.flip_mask is None:
                self.flip_mask = torch.rand(self.n_train, device=self.device, generator=self.gen) < 0.5
            x = flip(x, self.flip_mask[perm] ^ bool(self.epoch % 2))
        elif self.flip:
            x = random_flip(x, self.gen)
        self.epoch += 1
        for _ in range(self.cutout_count if self.cutout else 0):
            x = random_cutout(x, self.cutout, self.gen)
        return x.contiguous(memory_format=self.memory_format), y

    def train_batches(self, batch_size):
        x, y = self.augmented_epoch()
        for i in range(0, self.n_train - batch_size + 1, batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]

    def test_batches(self, batch_size):
        for i in range(0, len(self.test_y), batch_size):
            yield self.test_x[i:i + batch_size], self.test_y[i:i + batch_size]


class Mixer:
    """Mixup or CutMix, batch-wise on the device. lambda (and CutMix's box) is drawn on the host
    from a seeded generator, the partner permutation on the device: nothing crosses back.
    Returns the mixed images and `mix` = (partner labels, lambda) for mixed_cross_entropy."""

    def __init__(self, hyp, device, seed):
        self.kind = 'mixup' if hyp['mixup'] else 'cutmix'
        self.alpha = hyp['mixup'] or hyp['cutmix']
        self.rng = random.Random(seed)
        self.gen = torch.Generator(device=device).manual_seed(seed + 7)

    def __call__(self, x, y):
        lam = self.rng.betavariate(self.alpha, self.alpha)
        perm = torch.randperm(len(y), device=y.device, generator=self.gen)
        partner = x[perm]
        if self.kind == 'mixup':
            mixed = lam * x + (1 - lam) * partner
        else:  # a box of about (1 - lam) of the area, clipped at the borders; lam = what is left
            h, w = x.shape[2:]
            side_h, side_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
            cy, cx = self.rng.randrange(h), self.rng.randrange(w)
            y0, y1 = max(cy - side_h // 2, 0), min(cy - side_h // 2 + side_h, h)
            x0, x1 = max(cx - side_w // 2, 0), min(cx - side_w // 2 + side_w, w)
            mixed = x.clone()
            mixed[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        return mixed.contiguous(memory_format=torch.channels_last), (y[perm], lam)
