"""Data: the shipped MNIST against its README checks, image folders, .npz archives, the 2-D toys, and the
seeded, resumable batch order."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mcm_fast.data import ImageData, batch_indices, load_dataset, load_mnist, shard
from mcm_fast.data.batches import SEED_STRIDE
from mcm_fast.data.images import load_image_folder, load_npz, load_toy
from mcm_fast.data.toy import GaussianMixture

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def everything(data) -> dict:
    return data.batch(torch.arange(len(data)))


def to_unit(v: np.ndarray) -> torch.Tensor:
    """uint8 pixels as the loaders' float32 values in [-1, 1]."""
    return torch.from_numpy(v).float() / 127.5 - 1


# MNIST ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_test_32():
    return load_mnist("test", 32)


@pytest.mark.parametrize("resolution", [32, 28, 16, 8])
def test_mnist_shapes_labels_and_range(resolution):
    data = load_mnist("train", resolution)
    assert len(data) == 60_000 and data.shape == (1, resolution, resolution) and data.num_classes == 10
    batch = data.batch(torch.tensor([0, 59_999, 7]))
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (3, 1, resolution, resolution)
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist()[0] == 5
    assert float(batch["x"].min()) >= -1 and float(batch["x"].max()) <= 1


def test_mnist_training_pixels_and_class_counts_match_the_readme():
    data = load_mnist("train", 28)
    counts = torch.bincount(data.images.flatten(), minlength=256).double()  # exact moments from the histogram
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * values).sum() / counts.sum()
    std = ((counts * (values - mean).square()).sum() / counts.sum()).sqrt()
    assert mean.item() == pytest.approx(0.13066, abs=5e-6) and std.item() == pytest.approx(0.30811, abs=5e-6)
    assert torch.bincount(data.labels).tolist() == MNIST_TRAIN_COUNTS
    assert len(load_mnist("test", 28)) == 10_000


def test_mnist_32_is_the_original_padded_with_black(mnist_test_32):
    x32 = everything(mnist_test_32)["x"]
    x28 = everything(load_mnist("test", 28))["x"]
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert bool((x32[:, :, border] == -1).all())
    assert torch.equal(x32[:, :, 2:30, 2:30], x28)
    assert float(x32.min()) == -1 and float(x32.max()) == 1


@pytest.mark.parametrize("resolution", [16, 8])
def test_mnist_area_downsampling_equals_avg_pool_of_the_padded_images(mnist_test_32, resolution):
    expected = F.avg_pool2d(everything(mnist_test_32)["x"].double(), 32 // resolution)
    data = load_mnist("test", resolution)
    torch.testing.assert_close(everything(data)["x"].double(), expected, rtol=0, atol=1e-6)
    assert torch.equal(data.labels, mnist_test_32.labels)


def test_mnist_rejects_other_resolutions_and_splits():
    with pytest.raises(ValueError, match=r"resolution: expected one of 32, 28, 16, 8"):
        load_mnist("train", 64)
    with pytest.raises(ValueError, match="split"):
        load_mnist("valid")


# image folders ------------------------------------------------------------------------------------------------


def save(path, array: np.ndarray, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def pixels(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_class_folders_are_labeled_in_sorted_order(tmp_path):
    save(tmp_path / "zebra" / "a.png", pixels((8, 8), 0))
    save(tmp_path / "apple" / "b.png", pixels((8, 8), 1))
    save(tmp_path / "apple" / "a.png", pixels((16, 16), 2))
    save(tmp_path / "mango" / "nested" / "c.png", pixels((8, 8), 3))
    data = load_image_folder(tmp_path, 8)
    assert data.shape == (1, 8, 8) and len(data) == 4 and data.num_classes == 3
    batch = everything(data)
    assert batch["label"].tolist() == [0, 0, 1, 2]  # apple/a, apple/b, mango/nested/c, zebra/a
    assert torch.equal(batch["x"][1, 0], to_unit(pixels((8, 8), 1)))
    assert float(batch["x"].min()) >= -1 and float(batch["x"].max()) <= 1
    assert load_dataset("folder", path=str(tmp_path), resolution=8).num_classes == 3


def test_flat_rgb_folder_round_trips_png_and_converts_rgba_palette_and_jpeg(tmp_path):
    rgb = pixels((8, 8, 3), 4)
    save(tmp_path / "a.png", rgb)
    save(tmp_path / "b.png", np.dstack([rgb, pixels((8, 8), 5)]), "RGBA")
    Image.fromarray(rgb).convert("P").save(tmp_path / "c.png")
    smooth = np.broadcast_to(np.linspace(0, 255, 8, dtype=np.uint8)[:, None, None], (8, 8, 3)).copy()
    Image.fromarray(smooth).save(tmp_path / "d.JPG", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path, 8)
    assert isinstance(data, ImageData) and data.labels is None and data.num_classes == 0
    assert data.shape == (3, 8, 8) and len(data) == 4
    batch = everything(data)
    assert set(batch) == {"x"}
    expected = to_unit(rgb).permute(2, 0, 1)
    assert torch.equal(batch["x"][0], expected)  # PNG: exact
    assert torch.equal(batch["x"][1], expected)  # RGBA: alpha dropped
    assert (batch["x"][3] - to_unit(smooth).permute(2, 0, 1)).abs().max() < 0.05  # JPEG: lossy


def test_center_crop_then_resize(tmp_path):
    wide = pixels((8, 12), 6)  # h=8, w=12: the crop keeps columns 2..9
    save(tmp_path / "wide.png", wide)
    assert torch.equal(everything(load_image_folder(tmp_path, 8))["x"][0, 0], to_unit(wide[:, 2:10]))
    box = everything(load_image_folder(tmp_path, 4))["x"][0, 0]  # an integer factor: the BOX filter, block means
    means = wide[:, 2:10].reshape(4, 2, 4, 2).mean(axis=(1, 3))
    torch.testing.assert_close(box, torch.from_numpy(means).float() / 127.5 - 1, rtol=0, atol=1 / 127.5)
    assert load_image_folder(tmp_path, 5).shape == (1, 5, 5)  # BICUBIC otherwise
    assert load_image_folder(tmp_path, 20).shape == (1, 20, 20)


def test_gray_and_rgb_mixed_become_rgb_and_16_bit_gray_is_scaled(tmp_path):
    gray = pixels((4, 4), 7)
    save(tmp_path / "a.png", gray)
    save(tmp_path / "b.png", pixels((4, 4, 3), 8))
    x = everything(load_image_folder(tmp_path, 4))["x"]
    assert x.shape == (2, 3, 4, 4)
    for channel in range(3):
        assert torch.equal(x[0, channel], to_unit(gray))
    deep = tmp_path / "deep"
    save(deep / "a.png", np.array([[0, 128 * 257], [65535, 257]], dtype=np.uint16))
    assert everything(load_image_folder(deep, 2))["x"][0, 0].tolist() == to_unit(np.array([[0, 128], [255, 1]],
                                                                                          dtype=np.uint8)).tolist()


def test_folder_errors_name_the_path_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*no PNG/JPEG"):
        load_image_folder(tmp_path / "empty", 8)
    bad = tmp_path / "bad"
    save(bad / "fine.png", pixels((4, 4), 9))
    (bad / "broken.png").write_bytes(np.random.default_rng(0).bytes(200))
    with pytest.raises(ValueError, match=r"broken\.png: not a readable PNG/JPEG image") as error:
        load_image_folder(bad, 4)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="resolution"):
        load_image_folder(bad, 0)
    with pytest.raises(ValueError, match="resolution"):
        load_dataset("folder", path=str(bad))


# npz ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW", "N1HW", "NHW1"])
def test_npz_layouts(tmp_path, layout):
    channels = 3 if layout in ("NHWC", "NCHW") else 1
    nchw = pixels((5, channels, 6, 6), 10)
    x = {"NHWC": nchw.transpose(0, 2, 3, 1), "NCHW": nchw, "NHW": nchw[:, 0], "N1HW": nchw,
         "NHW1": nchw.transpose(0, 2, 3, 1)}[layout]
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 2, 1, 2, 0], dtype=np.int32))
    data = load_npz(tmp_path / "d.npz")
    assert data.shape == (channels, 6, 6) and data.num_classes == 3
    batch = everything(data)
    assert torch.equal(batch["x"], to_unit(nchw))
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [0, 2, 1, 2, 0]


def test_npz_float_images_and_unlabeled(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 5, 5))
    np.savez(tmp_path / "f.npz", x=x)
    data = load_dataset("npz", path=tmp_path / "f.npz", resolution=5)
    assert data.labels is None and data.num_classes == 0 and data.images.dtype == torch.float32
    assert torch.equal(everything(data)["x"], torch.from_numpy(x).float())
    np.savez(tmp_path / "g.npz", x=x * 2)
    with pytest.raises(ValueError, match=r"g\.npz: key 'x': expected finite float values in \[-1, 1\]"):
        load_npz(tmp_path / "g.npz")
    with pytest.raises(ValueError, match=r"resolution: .*5x5.*got 8"):
        load_dataset("npz", path=tmp_path / "f.npz", resolution=8)


def test_npz_mnist_style_split_keys(tmp_path):
    file = tmp_path / "m.npz"
    np.savez(file, x_train=pixels((6, 4, 4), 11), y_train=np.arange(6) % 3, x_test=pixels((2, 4, 4), 12),
             y_test=np.array([1, 1]))
    assert len(load_npz(file, "train")) == 6 and len(load_npz(file, "test")) == 2
    assert len(load_dataset("npz", path=file)) == 6 and len(load_dataset("npz", path=file, split="test")) == 2
    with pytest.raises(ValueError, match=r"no key 'x'; found \['x_test', 'x_train', 'y_test', 'y_train'\]; pass split"):
        load_npz(file)
    plain = tmp_path / "p.npz"
    np.savez(plain, x=pixels((3, 4, 4), 13))
    assert len(load_npz(plain, "train")) == 3
    with pytest.raises(ValueError, match=r"no key 'x_test'; found \['x'\]"):
        load_npz(plain, "test")


def test_npz_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")
    file = tmp_path / "e.npz"
    np.savez(file, images=pixels((3, 4, 4), 14))
    with pytest.raises(ValueError, match=r"e\.npz: no key 'x'; found \['images'\]"):
        load_npz(file)
    np.savez(file, x=pixels((3, 4, 4), 14), y=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"e\.npz: key 'y': expected 3 integer labels"):
        load_npz(file)
    np.savez(file, x=pixels((3, 4, 4), 14), y=np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"e\.npz: key 'y': expected labels in \[0, 65536\), got \[-1, 1\]"):
        load_npz(file)
    np.savez(file, x=pixels((3, 4, 4, 5), 14))
    with pytest.raises(ValueError, match=r"e\.npz: key 'x': expected images"):
        load_npz(file)
    np.savez(file, x=np.zeros((3, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match=r"e\.npz: key 'x': expected uint8"):
        load_npz(file)
    np.savez(file, x=np.array([np.zeros(3), "pickled"], dtype=object))
    with pytest.raises(ValueError, match=r"e\.npz: key 'x': cannot be read without unpickling"):
        load_npz(file)
    np.save(tmp_path / "single.npy", pixels((3, 4, 4), 14))
    with pytest.raises(TypeError, match=r"single\.npy: expected a \.npz archive"):
        load_npz(tmp_path / "single.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match=r"junk\.npz: not a readable \.npz archive"):
        load_npz(tmp_path / "junk.npz")


# load_dataset's arguments ---------------------------------------------------------------------------------------


def test_load_dataset_rejects_unknown_names_and_unused_arguments(tmp_path):
    with pytest.raises(ValueError, match="name: expected one of mnist, folder, npz, latents, ring, grid"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match=r"path: not used by data set 'mnist'.*path='x'"):
        load_dataset("mnist", path="x")
    with pytest.raises(ValueError, match=r"resolution, split: not used by data set 'ring'"):
        load_dataset("ring", resolution=16, split="test", n=10)
    with pytest.raises(ValueError, match=r"n: not used by data set 'folder'"):
        load_dataset("folder", path=tmp_path, resolution=8, n=5)
    with pytest.raises(ValueError, match="n: data set 'grid' needs"):
        load_dataset("grid")
    with pytest.raises(ValueError, match="path: data set 'npz' needs a path"):
        load_dataset("npz")


# toys -----------------------------------------------------------------------------------------------------------


def test_grid_means_and_stds():
    grid = GaussianMixture.grid()
    axis = [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert sorted(map(tuple, grid.means.tolist())) == [(a, b) for a in axis for b in axis]
    assert torch.equal(grid.stds, torch.full((25,), 0.05, dtype=torch.float64))


@pytest.mark.parametrize("name", ["ring", "grid"])
def test_toys_are_seeded_point_sets(name):
    data = load_dataset(name, n=2000, seed=3)
    assert len(data) == 2000 and data.shape == (2,) and data.num_classes == 0
    batch = data.batch(torch.tensor([0, 5, 9]))
    assert set(batch) == {"x"} and batch["x"].dtype == torch.float32 and batch["x"].shape == (3, 2)
    assert torch.equal(everything(load_toy(name, 2000, 3))["x"], everything(data)["x"])
    assert not torch.equal(everything(load_toy(name, 2000, 4))["x"], everything(data)["x"])
    mixture = GaussianMixture.ring() if name == "ring" else GaussianMixture.grid()
    nearest = torch.cdist(everything(data)["x"].double(), mixture.means).min(1).values
    assert float(nearest.max()) < 6 * 0.05 and float(nearest.mean()) < 2 * 0.05
    counts = torch.cdist(everything(data)["x"].double(), mixture.means).argmin(1).bincount(minlength=len(mixture.means))
    assert bool((counts > 0).all())


# batch order ----------------------------------------------------------------------------------------------------


def test_batch_indices_follow_the_documented_permutations():
    n, b, seed = 10, 3, 7
    for epoch in range(3):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * SEED_STRIDE + epoch))
        got = torch.cat([batch_indices(n, b, epoch * 3 + i, seed) for i in range(3)])
        assert torch.equal(got, perm[:9])  # n // b = 3 batches per epoch; the tail index is dropped
        assert len(set(got.tolist())) == 9 and got.dtype == torch.int64


@pytest.mark.parametrize("n,b", [(60_000, 128), (37, 5), (8, 8), (1, 1)])
def test_every_index_once_per_epoch_and_resumes_anywhere(n, b):
    per_epoch = n // b
    steps = [batch_indices(n, b, k, seed=1) for k in range(2 * per_epoch + 1)]
    for epoch in range(2):
        seen = torch.cat(steps[epoch * per_epoch:(epoch + 1) * per_epoch])
        assert seen.shape == (per_epoch * b,) and len(set(seen.tolist())) == per_epoch * b
        assert int(seen.min()) >= 0 and int(seen.max()) < n
    for k in (per_epoch - 1, 0, len(steps) - 1, per_epoch // 2):  # out of order: no iterator state
        assert torch.equal(batch_indices(n, b, k, seed=1), steps[k])


def test_batch_indices_differ_across_seeds_and_epochs_and_are_copies():
    a = batch_indices(1000, 100, 0, seed=0)
    assert not torch.equal(a, batch_indices(1000, 100, 0, seed=1))
    assert not torch.equal(a, batch_indices(1000, 100, 10, seed=0))  # step 10 opens epoch 1
    a.zero_()
    assert not bool((batch_indices(1000, 100, 0, seed=0) == 0).all())


def test_batch_indices_errors_name_the_argument():
    with pytest.raises(ValueError, match="global_batch: expected at most n=10"):
        batch_indices(10, 11, 0, 0)
    with pytest.raises(ValueError, match="step"):
        batch_indices(10, 2, -1, 0)
    with pytest.raises(TypeError, match="n: expected an int"):
        batch_indices(10.0, 2, 0, 0)


def test_shards_concatenate_to_the_global_batch():
    indices = batch_indices(100, 24, 5, seed=2)
    for parts in (1, 2, 3, 4, 8, 24):
        pieces = [shard(indices, part, parts) for part in range(parts)]
        assert all(len(p) == 24 // parts for p in pieces)
        assert torch.equal(torch.cat(pieces), indices)
    with pytest.raises(ValueError, match="global_batch: expected a multiple of parts=5"):
        shard(indices, 0, 5)
    with pytest.raises(ValueError, match="part: expected a part in"):
        shard(indices, 4, 4)


# damaged and hostile .npz files ------------------------------------------------------------------------------


def npz_declaring(path, shape, dtype="|u1", data=b"\0" * 64):
    """An .npz whose x.npy header declares shape but holds only `data`."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + data)


def damaged_npz(tmp_path, how):
    file = tmp_path / f"{how}.npz"
    images, labels = pixels((50, 8, 8), 3), np.arange(50) % 10
    if how == "declares-2^40-bytes":
        npz_declaring(file, (2**40,))
    elif how == "declares-more-than-it-holds":
        npz_declaring(file, (1000, 8, 8))
    elif how == "labels-2^40":
        np.savez(file, x=images, y=np.where(labels == 3, 2**40, labels))
    elif how == "not-npy-member":
        with __import__("zipfile").ZipFile(file, "w") as archive:
            archive.writestr("x.npy", b"just some bytes")
    else:
        np.savez_compressed(file, x=images, y=labels)
        data = bytearray(file.read_bytes())
        if how == "truncated":
            data = data[: len(data) // 2]
        elif how == "flipped-bytes":
            for i in range(200, 260):
                data[i] ^= 0xFF
        elif how == "empty":
            data = bytearray()
        file.write_bytes(bytes(data))
    return file


@pytest.mark.parametrize("how, message", [
    ("truncated", "not a readable .npz archive"),
    ("empty", "not a readable .npz archive"),
    ("flipped-bytes", "damaged"),
    ("declares-2^40-bytes", "declares uint8 (1099511627776,)"),
    ("declares-more-than-it-holds", "declares uint8 (1000, 8, 8) (64,000 bytes), but its member holds"),
    ("labels-2^40", "key 'y': expected labels in [0, 65536), got [0, 1099511627776]"),
    ("not-npy-member", "key 'x': damaged header"),
])
def test_a_damaged_or_hostile_npz_is_one_line_naming_the_file(tmp_path, how, message):
    file = damaged_npz(tmp_path, how)
    with pytest.raises(ValueError) as error:
        load_dataset("npz", path=file)
    text = str(error.value)
    assert text.startswith(f"{file}: ") and "\n" not in text and message in text, text


def test_labels_must_lie_below_the_class_count():
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"^labels: expected classes in \[0, num_classes\)"):
        ImageData(images, torch.tensor([0, 1, 10]), num_classes=10)
    with pytest.raises(ValueError, match="^labels: expected classes"):
        ImageData(images, torch.tensor([0, 1, 2**40]))
    with pytest.raises(ValueError, match="^labels: expected classes"):
        ImageData(images, torch.tensor([0, -1, 1]), num_classes=10)
