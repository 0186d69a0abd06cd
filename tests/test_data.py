import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import replace

import pytest
import torch

from latentprobe.data import cifar as data
from latentprobe.data.cifar import (
    DataError,
    Normalizer,
    augment,
    batch_indices,
    load_split,
    train_val_split,
)
from latentprobe.data import download
from latentprobe.data.download import download_dataset


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


def test_a_downloaded_file_whose_bytes_change_is_refused_on_its_next_read(cifar10_root, tmp_path, monkeypatch):
    """A download records its files' digests as unpacked from the md5-checked archive: one pixel
    changed in place afterwards (size kept) is named on the next read, a fresh process's first too."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(_archive(cifar10_root))
    spec = replace(data.DATASETS["cifar10"], archive_url=archive.as_uri(),
                   archive_md5=hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setitem(data.DATASETS, "cifar10", spec)
    target = tmp_path / "fresh"
    assert len(load_split("cifar10", "test", target)) == 50  # downloaded, then read as released
    batch = target / "cifar-10-batches-py" / "test_batch"
    content = bytearray(batch.read_bytes())
    content[-300] ^= 0x01  # a pixel of the data array: the file still unpickles
    batch.write_bytes(bytes(content))
    monkeypatch.setattr(download, "_DIGESTS", {}, raising=False)  # as in a new process
    with pytest.raises(DataError, match=r"test_batch is not the file unpacked from the md5-checked archive .*re-download"):
        load_split("cifar10", "test", target)
    assert len(load_split("cifar10", "train", target)) == 200  # the untouched files still read


def test_download_checksum_mismatch_leaves_nothing(cifar10_root, tmp_path):
    archive = tmp_path / "archive.tar.gz"
    archive.write_bytes(_archive(cifar10_root))
    target = tmp_path / "fresh"
    with pytest.raises(DataError, match="checksum mismatch"):
        download_dataset(data.DATASETS["cifar10"], target, url=archive.as_uri(), md5="0" * 32)
    assert not target.exists()  # the folder it made for the download goes too


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


def _rewrite(path, **changes) -> None:
    record = data.read_batch_file(path)
    record.update(changes)
    with open(path, "wb") as f:
        pickle.dump(record, f)


@pytest.mark.parametrize("labels, message", [
    ([0.0, 1.7, 2.0] + [0] * 47, "labels must be integers, got float64"),  # 1.7 is no class, not class 1
    (["3"] * 50, "labels must be integers, got <U1"),
    ([[0, 1], [2]] + [0] * 48, "labels is not a list of integers"),
])
def test_labels_that_are_not_integers_are_refused_naming_the_file(cifar10_root, labels, message):
    _rewrite(cifar10_root / "cifar-10-batches-py" / "test_batch", labels=labels)
    with pytest.raises(DataError, match=f"test_batch: {message}"):
        load_split("cifar10", "test", cifar10_root, download=False)


@pytest.mark.parametrize("names", [7, "airplane", [1, 2, 3]])
def test_class_names_that_are_not_a_list_of_names_are_refused(cifar10_root, names):
    _rewrite(cifar10_root / "cifar-10-batches-py" / "batches.meta", label_names=names)
    with pytest.raises(DataError, match="batches.meta: label_names must be a list of class names"):
        load_split("cifar10", "test", cifar10_root, download=False)


def test_a_frame_claiming_2_to_the_50_bytes_is_a_corrupt_file(cifar10_root):
    path = cifar10_root / "cifar-10-batches-py" / "test_batch"
    for size in (2**50, 2**63 - 1):  # an 11-byte file: PROTO 4, FRAME <size>
        path.write_bytes(b"\x80\x04\x95" + size.to_bytes(8, "little"))
        with pytest.raises(DataError, match="test_batch is truncated or corrupt"):
            load_split("cifar10", "test", cifar10_root, download=False)


def test_a_huge_memo_index_allocates_nothing(cifar10_root):
    path = cifar10_root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"\x80\x02}r\xff\xff\xff\x7f.")  # EMPTY_DICT, LONG_BINPUT 2**31 - 1, STOP
    with pytest.raises(DataError, match="does not hold a CIFAR batch dict|has no 'data' entry"):
        load_split("cifar10", "test", cifar10_root, download=False)


def test_fuzzed_batch_files_fail_with_the_one_line_data_error(tmp_path):
    """A fixed-seed fuzz of the batch reader: bytes flipped, cut, inserted, or overwritten with
    huge sizes, in a data file and in batches.meta. Every failure is a one-line DataError."""
    import random

    from conftest import write_cifar10

    root = write_cifar10(tmp_path / "data", per_batch=2, test=3)
    rng, failures = random.Random(0), 0
    for name in ("test_batch", "batches.meta"):
        path = root / "cifar-10-batches-py" / name
        original = path.read_bytes()
        for _ in range(1500):
            mutated, at = bytearray(original), rng.randrange(len(original))
            operation = rng.randrange(4)
            if operation == 0:
                mutated[at] = rng.randrange(256)
            elif operation == 1:
                mutated = mutated[:at]
            elif operation == 2:
                mutated[at:at] = rng.randbytes(rng.randint(1, 9))
            else:
                mutated[at:at + 8] = rng.choice([2**31, 2**50, 2**63 - 1]).to_bytes(8, "little")
            path.write_bytes(bytes(mutated))
            try:
                load_split("cifar10", "test", root, download=False)
            except DataError as err:
                assert "\n" not in str(err) and "cifar-10-batches-py" in str(err)  # names the file or folder
                failures += 1
        path.write_bytes(original)
    assert failures > 1000  # most mutations break the file; each break was the data error


def test_a_failed_download_into_a_new_folder_leaves_no_folder(tmp_path):
    typo = tmp_path / "dta" / "cifar"
    with pytest.raises(DataError, match="could not download"):
        download_dataset(data.DATASETS["cifar10"], typo, url=(tmp_path / "nope.tar.gz").as_uri())
    assert list(tmp_path.iterdir()) == []


def test_an_archive_that_will_not_unpack_names_no_folder_to_delete(tmp_path):
    archive = tmp_path / "archive.tar.gz"
    archive.write_bytes(b"not a tar archive at all" * 10)
    target = tmp_path / "data"
    target.mkdir()
    with pytest.raises(DataError, match="could not unpack .*nothing was kept in"):
        download_dataset(data.DATASETS["cifar10"], target, url=archive.as_uri(),
                         md5=hashlib.md5(archive.read_bytes()).hexdigest())
    assert list(target.iterdir()) == []


def test_an_array_larger_than_its_file_is_refused_before_it_is_allocated(cifar10_root):
    import numpy as np

    class Crafted:  # a 229-byte file declaring a (150000, 3072) uint8 array: 460 MB
        def __reduce__(self):
            from numpy._core.multiarray import _reconstruct
            return _reconstruct, (np.ndarray, (0,), b"b"), (1, (150000, 3072), np.dtype("uint8"), False, b"x")

    path = cifar10_root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"data": Crafted(), "labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=r"an array of shape \(150000, 3072\) \(460,800,000 bytes\) in a file of"):
        load_split("cifar10", "test", cifar10_root, download=False)


def test_a_protocol_5_pickle_of_the_same_batch_reads_the_same(cifar10_root):
    path = cifar10_root / "cifar-10-batches-py" / "test_batch"
    before = load_split("cifar10", "test", cifar10_root, download=False)
    record = data.read_batch_file(path)
    path.write_bytes(pickle.dumps(record, protocol=5))  # numpy arrays as _frombuffer over the file's bytes
    after = load_split("cifar10", "test", cifar10_root, download=False)
    assert torch.equal(before.images, after.images) and torch.equal(before.labels, after.labels)


@pytest.mark.parametrize("names, message", [
    (["airplane"] * 10, "10 distinct printable class names"),
    (["\x00ird"] + [f"c{i}" for i in range(9)], "10 distinct printable class names"),
    ([f"c{i}" for i in range(13)], "got 13 such as"),
])
def test_class_names_that_cannot_be_cifar10s_are_refused(cifar10_root, names, message):
    _rewrite(cifar10_root / "cifar-10-batches-py" / "batches.meta", label_names=names)
    with pytest.raises(DataError, match=message):
        load_split("cifar10", "test", cifar10_root, download=False)
