"""mcm_fast.tensor_files against the safetensors library: files written a tensor at a time are the library's format
both ways, bit for bit in every dtype; a read views one buffer (no second copy); a malformed file is an error
naming it."""
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mcm_fast.tensor_files import DTYPES, header, mapped, read_tensors, write_tensors


def random_tensors(gen) -> dict[str, torch.Tensor]:
    """One tensor per dtype, odd shapes (a scalar, an empty one, a transposed view) of fresh random bits."""
    shapes = [(3, 5, 7), (), (0, 4), (9,), (2, 3), (11, 1), (4, 3), (1,), (5, 2, 1), (7,), (3, 3), (13,), (6, 1),
              (5,), (2, 9)]
    tensors = {}
    for (name, dtype), shape in zip(DTYPES.items(), shapes):
        count = torch.Size(shape).numel() * dtype.itemsize
        bits = torch.randint(0, 256, (count,), generator=gen, dtype=torch.uint8)
        tensors[f"t_{name}"] = bits.view(dtype).view(shape) if dtype != torch.bool else (bits % 2).bool().view(shape)
    tensors["transposed"] = torch.randn(5, 3, generator=gen).t()  # not contiguous
    return tensors


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(-1).view(torch.uint8)


def same_bits(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(bits(a[key]), bits(b[key])), key


def test_written_files_are_the_librarys_format_both_ways(tmp_path, gen):
    tensors = random_tensors(gen)
    ours = tmp_path / "ours.safetensors"
    digest = write_tensors(ours, tensors)
    assert digest == hashlib.sha256(ours.read_bytes()).hexdigest()
    same_bits(load_file(ours), tensors)
    theirs = tmp_path / "theirs.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, theirs, metadata={"format": "pt"})
    same_bits(read_tensors(theirs), tensors)
    same_bits(mapped(theirs), tensors)
    same_bits(read_tensors(ours, digest), tensors)


def test_a_read_views_one_buffer_laid_out_as_the_file(tmp_path, gen):
    tensors = {"a": torch.randn(64, generator=gen), "b": torch.randn(3, 7, generator=gen).bfloat16(),
               "c": torch.arange(5)}
    write_tensors(tmp_path / "f.safetensors", tensors)
    text = (tmp_path / "f.safetensors").read_bytes()
    entries = json.loads(text[8:8 + int.from_bytes(text[:8], "little")])
    read = read_tensors(tmp_path / "f.safetensors")
    base = read["a"].data_ptr() - entries["a"]["data_offsets"][0]
    for key in tensors:  # every tensor where the file has its bytes, in one allocation: nothing copied
        assert read[key].data_ptr() - base == entries[key]["data_offsets"][0], key
        assert read[key].data_ptr() % read[key].dtype.itemsize == 0, key  # wider dtypes first: aligned
    assert sorted(entries, key=lambda k: entries[k]["data_offsets"]) == ["c", "a", "b"]  # int64, float32, bf16


def test_a_tensor_that_starts_unaligned_reads_its_values(tmp_path, gen):
    odd, wide = torch.randn(3, generator=gen).half(), torch.randn(4, generator=gen)
    first = header({"odd": (odd.dtype, [3]), "wide": (wide.dtype, [4])})
    entries = json.loads(first[8:])
    assert [entries[k]["data_offsets"] for k in ("odd", "wide")] == [[0, 6], [6, 22]]  # wide starts at byte 6
    (tmp_path / "f.safetensors").write_bytes(first + odd.view(torch.uint8).numpy().tobytes()
                                             + wide.view(torch.uint8).numpy().tobytes())
    for read in (read_tensors, mapped):
        same_bits(read(tmp_path / "f.safetensors"), {"odd": odd, "wide": wide})
    same_bits(load_file(tmp_path / "f.safetensors"), {"odd": odd, "wide": wide})


def raw(entries: dict, data: bytes, size: int | None = None) -> bytes:
    text = json.dumps(entries).encode()
    return (len(text) if size is None else size).to_bytes(8, "little") + text + data


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("content, reason", [
    (b"\x01\x02", "shorter than its 8-byte header length"),
    (raw({"x": F32x2}, bytes(8), size=10**9), "a header of 1000000000 bytes"),
    (b"\x04" + bytes(7) + b"nope", "its header is not JSON"),
    (raw([1, 2], b""), "its header is not a JSON object"),
    (raw({"__metadata__": {"a": 1}}, b""), "__metadata__ is not a map of strings"),
    (raw({"x": {**F32x2, "dtype": "F99"}}, bytes(8)), "tensor 'x' has the entry"),
    (raw({"x": {**F32x2, "shape": [3]}}, bytes(8)), "tensor 'x' has the entry"),
    (raw({"x": {**F32x2, "shape": [-2]}}, bytes(8)), "tensor 'x' has the entry"),
    (raw({"x": {**F32x2, "data_offsets": [4, 12]}}, bytes(12)), "tensor 'x' starts at byte 4, expected 0"),
    (raw({"x": F32x2}, bytes(6)), "its tensors end at byte 8 of 6"),
    (raw({"x": F32x2, "y": F32x2}, bytes(8)), "tensor 'y' starts at byte 0, expected 8"),
])
def test_a_malformed_file_is_an_error_naming_it(tmp_path, content, reason):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    for read in (read_tensors, mapped):
        with pytest.raises(ValueError, match=f"^{path}: corrupt \\({reason}"):
            read(path)


def test_a_file_whose_bytes_differ_from_its_sha256_is_damaged(tmp_path):
    digest = write_tensors(tmp_path / "f.safetensors", {"x": torch.ones(3)})
    read_tensors(tmp_path / "f.safetensors", digest)
    with pytest.raises(ValueError, match="^run/f: damaged; its sha256 differs"):
        read_tensors(tmp_path / "f.safetensors", "0" * 64, where="run/f")
    with pytest.raises(TypeError, match="x: dtype torch.complex64 has no safetensors name"):
        write_tensors(tmp_path / "g.safetensors", {"x": torch.ones(2, dtype=torch.complex64)})
