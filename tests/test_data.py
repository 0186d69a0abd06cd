import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import replace

import pytest
import torch

from latentprobe import data
from latentprobe.data import DataError, Normalizer, augment, batch_indices, load_split, train_val_split
from latentprobe.download import download_dataset


def test_cifar10_layout(cifar10_root):
    train = load_split("cifar10", "train", cifar10_root, download=False)
    test = load_split("cifar10", "test", cifar10_root, download=False)
    assert train.images.shape == (200, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and len(test) == 50
    assert train.class_names[0] == "airplane" and len(train.class_names) == 10


def test_cifar100_fine_and_coarse(cifar100_root):
    train = load_split("cifar100", "train", cifar100_root, download=False)
    assert len(train.class_names) == 100 and len(train.coarse_names) == 20
    coarse = train.with_label_type("coarse")
    assert torch.equal(coarse.labels, train.labels // 5) and coarse.class_names[3] == "coarse_3"
    assert coarse.subset(torch.arange(5)).labels.tolist() == (train.labels[:5] // 5).tolist()


def test_root_from_environment(cifar10_root, monkeypatch):
    monkeypatch.setenv("LATENTPROBE_DATA", str(cifar10_root))
    assert data.data_root(None) == cifar10_root
    assert len(load_split("cifar10", "test", download=False)) == 50


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(cifar10_root):
    path = cifar10_root / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": _Exploit(), "labels": [0]}))
    with pytest.raises(DataError, match="refusing to load global .*system"):
        load_split("cifar10", "train", cifar10_root, download=False)


def test_truncated_file_is_a_clear_error(cifar10_root):
    path = cifar10_root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_3 is truncated or corrupt.*re-download"):
        load_split("cifar10", "train", cifar10_root, download=False)


def test_garbage_file_is_a_clear_error(cifar10_root):
    (cifar10_root / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DataError, match="test_batch"):
        load_split("cifar10", "test", cifar10_root, download=False)


def test_wrong_shapes_and_label_counts(cifar10_root):
    path = cifar10_root / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({"data": torch.zeros(4, 100, dtype=torch.uint8).numpy(), "labels": [0] * 4}, f)
    with pytest.raises(DataError, match=r"shape \(N, 3072\)"):
        load_split("cifar10", "test", cifar10_root, download=False)
    with open(path, "wb") as f:
        pickle.dump({"data": torch.zeros(4, 3072, dtype=torch.uint8).numpy(), "labels": [0] * 3}, f)
    with pytest.raises(DataError, match="4 images but 3 labels"):
        load_split("cifar10", "test", cifar10_root, download=False)


def test_missing_folder_without_download(tmp_path):
    with pytest.raises(DataError, match="not found.*--no-download"):
        load_split("cifar10", "train", tmp_path, download=False)


def _archive(source_root) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source_root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buffer.getvalue()


def test_download_from_file_url_with_checksum(cifar10_root, tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(_archive(cifar10_root))
    spec = replace(data.DATASETS["cifar10"], archive_url=archive.as_uri(),
                   archive_md5=hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setitem(data.DATASETS, "cifar10", spec)
    target = tmp_path / "fresh"
    train = load_split("cifar10", "train", target)  # downloads, verifies, unpacks
    assert len(train) == 200 and (target / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_download_checksum_mismatch_leaves_nothing(cifar10_root, tmp_path):
    archive = tmp_path / "archive.tar.gz"
    archive.write_bytes(_archive(cifar10_root))
    target = tmp_path / "fresh"
    with pytest.raises(DataError, match="checksum mismatch"):
        download_dataset(data.DATASETS["cifar10"], target, url=archive.as_uri(), md5="0" * 32)
    assert list(target.iterdir()) == []


def test_download_unreachable_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="could not download"):
        download_dataset(data.DATASETS["cifar10"], tmp_path, url=(tmp_path / "nope.tar.gz").as_uri())


def test_validation_split_is_seeded_and_disjoint(cifar10_root):
    train = load_split("cifar10", "train", cifar10_root, download=False)
    a_train, a_val = train_val_split(train, 50, seed=3)
    b_train, b_val = train_val_split(train, 50, seed=3)
    assert torch.equal(a_val.images, b_val.images) and len(a_train) == 150
    flat = lambda s: {bytes(x.numpy()) for x in s.images}  # noqa: E731
    assert not flat(a_train) & flat(a_val)


def test_batches_cover_every_index_once_and_split_across_ranks():
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat(list(batch_indices(103, 10, shuffle=True, generator=gen)))
    assert sorted(seen.tolist()) == list(range(103))
    shares = [torch.cat(list(batch_indices(103, 10, shuffle=True, generator=torch.Generator().manual_seed(1),
                                           rank=r, world_size=2))) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 51 and not set(shares[0].tolist()) & set(shares[1].tolist())


def test_normalise_and_augment_on_batches():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    norm = Normalizer("cifar10")
    x = norm(images)
    assert torch.allclose(norm.to_unit(x), images.float() / 255, atol=1e-5)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    unpadded = augment(x, torch.Generator().manual_seed(0), pad=0)
    assert all(torch.equal(u, v) or torch.equal(u, v.flip(2)) for u, v in zip(unpadded, x))
