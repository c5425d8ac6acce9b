"""Issue 34's data path: a tiny Stable-Diffusion-style pipeline folder built from configs (the stock pipeline loads
and samples it), its VAE and text encoder read as TextToImageParts (equal to diffusers' own encode_prompt and VAE
sample), captioned images from a folder, an npz or MNIST, and the latent cache: seeded, resumable to the same
bytes after a kill, verified on load, refusing to mix sources; bad folders are one-line errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from mcm_fast.data import latents as latent_cache  # noqa: E402
from mcm_fast.data.captions import DIGIT_PROMPTS, load_captioned  # noqa: E402
from mcm_fast.data.images import ImageData  # noqa: E402
from mcm_fast.data.latents import encode_latents, file_sha256, load_latents  # noqa: E402
from mcm_fast.integrations.text_to_image import TextToImageParts  # noqa: E402
from mcm_fast.integrations.tiny import bpe_vocabulary, tiny_text_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return tiny_text_pipeline(tmp_path_factory.mktemp("tiny") / "pipeline")


@pytest.fixture(scope="module")
def parts(pipeline_dir):
    return TextToImageParts(pipeline_dir)


@pytest.fixture(scope="module")
def digits():
    images, captions = load_captioned("mnist", 16, "test")
    return ImageData(images.images[:70]), captions[:70]


def test_the_tiny_pipeline_loads_and_samples_in_the_stock_pipeline(pipeline_dir):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(pipeline_dir, local_files_only=True,
                                                             use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(DIGIT_PROMPTS[7], num_inference_steps=2, height=16, width=16, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 1, 16, 16) and torch.isfinite(image).all()
    ids = pipe.tokenizer(DIGIT_PROMPTS[7]).input_ids
    assert pipe.tokenizer.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "handwritten</w>", "digit</w>",
                                                         "seven</w>", "<|endoftext|>"]


def test_bpe_vocabulary_reads_each_word_as_one_token():
    vocab, merges = bpe_vocabulary(["ab", "abc"])
    assert merges == ["a b</w>", "a b", "ab c</w>"]
    assert {"ab</w>", "abc</w>", "ab", "a", "c</w>"} <= set(vocab) and sorted(vocab.values()) == list(range(len(vocab)))


def test_parts_encode_as_diffusers_does(pipeline_dir, parts):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(pipeline_dir, local_files_only=True,
                                                             use_safetensors=True)
    positive, negative = pipe.encode_prompt(DIGIT_PROMPTS[3], "cpu", 1, True, "")
    ours = parts.encode_prompts([DIGIT_PROMPTS[3], ""])
    assert list(ours) == ["encoder_hidden_states"]
    ours = ours["encoder_hidden_states"]
    assert ours.shape == (2, 8, 32)
    torch.testing.assert_close(ours, torch.cat([positive, negative]), rtol=0, atol=0)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    expected = pipe.vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(5)) * pipe.vae.config.scaling_factor
    torch.testing.assert_close(parts.encode_images(x, torch.Generator().manual_seed(5)), expected, rtol=0, atol=0)
    torch.testing.assert_close(parts.decode(expected), pipe.vae.decode(expected).sample, rtol=0, atol=0)
    with pytest.raises(TypeError, match="prompts: expected a list of strings"):
        parts.encode_prompts("a handwritten digit one")


def test_a_folder_that_is_no_stable_diffusion_pipeline_is_one_line(pipeline_dir, tmp_path):
    import shutil

    folder = shutil.copytree(pipeline_dir, tmp_path / "p")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder_2": ["transformers", "CLIPTextModel"]}))
    with pytest.raises(ValueError, match=r"^teacher: .*second text encoder \(text_encoder_2\) but model_index"):
        TextToImageParts(folder)
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "text_encoder" / "model.safetensors").rename(folder / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"^teacher: .*holds pytorch_model.bin \(a pickle\) and no model.safetensors"):
        TextToImageParts(folder)
    (folder / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"^teacher: no .*model_index.json; expected a diffusers pipeline"):
        TextToImageParts(folder)


def test_captions_from_a_folder_an_npz_and_mnist(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    lines = []
    for k in range(3):
        Image.fromarray(np.full((20, 20), 40 * k, np.uint8)).save(tmp_path / "imgs" / f"{k}.png")
        lines.append(json.dumps({"file_name": f"{k}.png", "text": f"gray {k}"}))
    Image.fromarray(np.full((20, 20, 3), [200, 0, 0], np.uint8)).save(tmp_path / "imgs" / "red.png")
    lines.append(json.dumps({"file_name": "red.png", "text": "red"}))
    (tmp_path / "imgs" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    images, captions = load_captioned(tmp_path / "imgs", 16, channels=1)  # read a batch at a time
    assert images.shape == (1, 16, 16) and captions == ["gray 0", "gray 1", "gray 2", "red"]
    gray = images.batch(torch.tensor([2, 3]))["x"]
    level = lambda v: torch.tensor(v / 127.5 - 1, dtype=torch.float32).item()  # noqa: E731  (in float32)
    assert gray.shape == (2, 1, 16, 16) and gray[0].mean().item() == level(80)
    assert gray[1].mean().item() == level(round(200 * 299 / 1000))  # RGB as PIL's luminance
    rgb = load_captioned(tmp_path / "imgs", 16)[0].batch(torch.tensor([1, 3]))["x"]
    assert rgb.shape == (2, 3, 16, 16) and bool((rgb[0] == level(40)).all())
    assert rgb[1, :, 0, 0].tolist() == [level(200), -1.0, -1.0]
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 8, 8), np.uint8), text=np.array(["one", "two"]))
    images, captions = load_captioned(tmp_path / "d.npz")
    assert len(images) == 2 and captions == ["one", "two"]
    images, captions = load_captioned("mnist", 8, "test")
    assert captions[:3] == [DIGIT_PROMPTS[int(k)] for k in images.labels[:3]]


def test_bad_captioned_sources_are_one_line_errors(tmp_path):
    (tmp_path / "f").mkdir()
    with pytest.raises(FileNotFoundError, match="metadata.jsonl; expected one line"):
        load_captioned(tmp_path / "f", 16)
    (tmp_path / "f" / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\nnot json\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: file_name 'a.png' is not an image inside"):
        load_captioned(tmp_path / "f", 16)
    (tmp_path / "f" / "metadata.jsonl").write_text('{"file_name": "../../etc/passwd", "text": "x"}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: file_name '../../etc/passwd' is not an image inside"):
        load_captioned(tmp_path / "f", 16)
    (tmp_path / "f" / "metadata.jsonl").write_text('{"file_name": "a.png"}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: expected \{\"file_name\": str, \"text\": str\}"):
        load_captioned(tmp_path / "f", 16)
    np.savez(tmp_path / "objects.npz", x=np.zeros((2, 8, 8), np.uint8), text=np.array(["a", None], dtype=object))
    with pytest.raises(ValueError, match="key 'text': cannot be read without unpickling"):
        load_captioned(tmp_path / "objects.npz")
    np.savez(tmp_path / "short.npz", x=np.zeros((2, 8, 8), np.uint8), text=np.array(["a"]))
    with pytest.raises(ValueError, match=r"key 'text': expected 2 captions"):
        load_captioned(tmp_path / "short.npz")
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        load_captioned(tmp_path / "nothing")


def test_the_cache_holds_what_the_parts_give_and_is_seeded(parts, digits, tmp_path):
    images, captions = digits
    data = load_latents(encode_latents(images, captions, parts, tmp_path / "a", seed=1))
    assert len(data) == 70 and data.shape == (4, 8, 8) and data.num_classes == 0
    generator = torch.Generator().manual_seed(1 * latent_cache.SEED_STRIDE)
    torch.testing.assert_close(data.latents[:5], parts.encode_images(images.batch(torch.arange(5))["x"], generator))
    torch.testing.assert_close(data.cond["encoder_hidden_states"][7],
                               parts.encode_prompts([captions[7]])["encoder_hidden_states"][0])
    torch.testing.assert_close(data.null_cond, parts.encode_prompts([""]))
    assert data.manifest["pipeline"] == str(parts.folder.resolve())
    batch = data.batch(torch.tensor([3, 9]))
    assert batch["x"].shape == (2, 4, 8, 8) and batch["encoder_hidden_states"].shape == (2, 8, 32)
    again = load_latents(encode_latents(images, captions, parts, tmp_path / "b", seed=1))
    other = load_latents(encode_latents(images, captions, parts, tmp_path / "c", seed=2))
    assert torch.equal(again.latents, data.latents) and not torch.equal(other.latents, data.latents)
    assert torch.equal(other.cond["encoder_hidden_states"], data.cond["encoder_hidden_states"])  # no noise


def test_the_cache_is_joined_part_by_part_and_mapped_not_read(parts, digits, tmp_path, monkeypatch):
    """The joined cache is a safetensors file that safetensors itself reads as the parts concatenated; loading
    maps it (views of an np.memmap) and a subset keeps indices into the same tensors."""
    from safetensors.torch import load_file

    images, captions = digits
    monkeypatch.setattr(latent_cache, "CHUNK", 16)
    parts_seen = []
    join = latent_cache._join
    monkeypatch.setattr(latent_cache, "_join", lambda parts, path: parts_seen.append(
        {k: torch.cat([load_file(p)[k] for p in parts]) for k in load_file(parts[0])}) or join(parts, path))
    cache = encode_latents(images, captions, parts, tmp_path / "c")
    assert len(parts_seen) == 1 and parts_seen[0]["latents"].shape[0] == 70  # five parts of up to 16
    stored = load_file(cache / "latents.safetensors")
    assert stored.keys() == parts_seen[0].keys()
    assert all(torch.equal(stored[k], parts_seen[0][k]) for k in stored)
    data = load_latents(cache)

    def mapping_of(pointer):  # the file mapped at an address (Linux's /proc/self/maps)
        for line in Path("/proc/self/maps").read_text().splitlines():
            bounds, *rest = line.split()
            low, high = (int(v, 16) for v in bounds.split("-"))
            if low <= pointer < high:
                return rest[4] if len(rest) > 4 else None

    for tensor in (data.latents, data.cond["encoder_hidden_states"]):
        assert mapping_of(tensor.data_ptr()) == str((cache / "latents.safetensors").resolve())
    subset = data.subset(torch.tensor([5, 2, 40]))
    assert subset.latents is data.latents and len(subset) == 3
    batch = subset.batch(torch.tensor([2, 0]))
    assert torch.equal(batch["x"], stored["latents"][[40, 5]])
    assert torch.equal(batch["encoder_hidden_states"], stored["prompt_embeds"][[40, 5]])


def test_a_killed_encoding_resumes_to_the_same_bytes_and_a_damaged_cache_is_refused(parts, digits, tmp_path,
                                                                                     monkeypatch):
    images, captions = digits
    monkeypatch.setattr(latent_cache, "CHUNK", 16)
    reference = encode_latents(images, captions, parts, tmp_path / "whole")
    calls, encode = [], parts.encode_images

    def killed(x, generator):
        calls.append(len(x))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies while encoding its third part
        return encode(x, generator)

    monkeypatch.setattr(parts, "encode_images", killed)
    with pytest.raises(KeyboardInterrupt):
        encode_latents(images, captions, parts, tmp_path / "killed", batch_size=16)
    assert len(list((tmp_path / "killed" / "parts").glob("*.safetensors"))) == 2
    (tmp_path / "killed" / "parts" / "00001.safetensors").write_bytes(b"torn")  # and its last part is damaged
    monkeypatch.setattr(parts, "encode_images", encode)
    resumed = encode_latents(images, captions, parts, tmp_path / "killed", batch_size=16)
    assert file_sha256(resumed / "latents.safetensors") == file_sha256(reference / "latents.safetensors")
    assert not (resumed / "parts").exists()
    with pytest.raises(ValueError, match="holds latents of another source, encoder or seed"):
        encode_latents(images, [*captions[:-1], "another caption"], parts, tmp_path / "killed")
    cache = resumed / "latents.safetensors"
    blob = bytearray(cache.read_bytes())
    blob[-1] ^= 1
    cache.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"latents.safetensors: missing or damaged"):
        load_latents(resumed)
    assert latent_cache.load_null_cond(resumed)["encoder_hidden_states"].shape == (1, 8, 32)  # read alone
    (resumed / "null.safetensors").unlink()
    with pytest.raises(ValueError, match=r"null.safetensors: missing or damaged"):
        latent_cache.load_null_cond(resumed)
    with pytest.raises(FileNotFoundError, match="no .*manifest.json; expected a latent cache"):
        load_latents(tmp_path / "nothing")


def test_encoding_checks_its_arguments(parts, digits, tmp_path):
    images, captions = digits
    with pytest.raises(ValueError, match=r"captions: expected one per image \(70\), got 69"):
        encode_latents(images, captions[:-1], parts, tmp_path / "x")
    with pytest.raises(ValueError, match=r"images: the VAE takes \[1, 16, 16\] images, got \[1, 8, 8\]"):
        encode_latents(ImageData(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)), ["a", "b"], parts, tmp_path / "y")


def test_cli_encodes_a_captioned_folder_and_says_what_is_wrong_in_one_line(pipeline_dir, tmp_path, capsys):
    """mcm-fast encode: resumable (a second run reuses the cache), its errors one line naming --pipeline."""
    from PIL import Image

    from mcm_fast.cli import main

    (tmp_path / "imgs").mkdir()
    for k in range(4):
        Image.fromarray(np.full((16, 16), 60 * k, np.uint8)).save(tmp_path / "imgs" / f"{k}.png")
    (tmp_path / "imgs" / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{k}.png", "text": DIGIT_PROMPTS[k]}) + "\n" for k in range(4)))
    args = ["encode", "--pipeline", str(pipeline_dir), "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "c")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "encoded 4 of 4" in out and "latents [4, 8, 8], encoder_hidden_states [8, 32]" in out
    before = file_sha256(tmp_path / "c" / "latents.safetensors")
    assert main(args) == 0 and "encoded" not in capsys.readouterr().out  # the cache is reused
    assert file_sha256(tmp_path / "c" / "latents.safetensors") == before
    assert main(["encode", "--pipeline", str(tmp_path), "--data", "mnist", "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mcm-fast encode: pipeline: no ")


def test_device_blocks_still_work_after_loading_a_text_encoder(pipeline_dir):
    """transformers' from_pretrained swaps torch.linspace while it loads; in a fresh process whose first device
    block is inside it, torch would cache the swapped copy and `with torch.device("meta")` would make CPU tensors
    from then on (the UViT's meta-device tests failed after these tests). The package uses the cache first."""
    import subprocess
    import sys

    code = ("import torch; from mcm_fast.integrations.text_to_image import TextToImageParts; "
            f"TextToImageParts({str(pipeline_dir)!r}); "
            "exec('with torch.device(\"meta\"):\\n    print(torch.linspace(0, 1, 3).device)')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "meta"
