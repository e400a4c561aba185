"""Textual-inversion embeddings: the A1111 and diffusers files, read without running code, used in prompts by
their file name; an embedding changes the text encoder's input only at its token's positions."""

import json
import pickle

import numpy as np
import open_clip
import pytest
import torch
from factories import tiny_model, write_tiny_model_files
from PIL import Image

from ldm.adapters.embeddings import EmbeddingError, load_embedding, read_embedding
from ldm.core.errors import MissingFileError
from ldm.interfaces.cli.main import main
from ldm.io.checkpoint import save_state_dict
from ldm.models.long_prompts import encode_prompts

WIDTH = 32  # the tiny text encoder's token width


@pytest.fixture
def model():
    return tiny_model()


def a1111_pt(path, vectors):
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vectors},
            "name": path.stem,
            "step": 100,
            "sd_checkpoint": "abc",
            "sd_checkpoint_name": "base",
        },
        path,
    )
    return path


def test_the_three_file_layouts_read_the_same_vectors(tmp_path):
    vectors = torch.randn(3, WIDTH)
    save_state_dict({"emb_params": vectors}, tmp_path / "a.safetensors")
    torch.save({"<cat-toy>": vectors[0]}, tmp_path / "learned_embeds.bin")
    assert torch.equal(read_embedding(a1111_pt(tmp_path / "p.pt", vectors)), vectors)
    assert torch.equal(read_embedding(tmp_path / "a.safetensors"), vectors)
    assert torch.equal(read_embedding(tmp_path / "learned_embeds.bin"), vectors[:1])


class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"string_to_param": {"*": Payload()}}))
    with pytest.raises(EmbeddingError):
        read_embedding(path)
    assert "this ran" not in capsys.readouterr().out


def test_wrong_files_are_one_line_errors(model, tmp_path):
    save_state_dict({"a": torch.zeros(2, WIDTH), "b": torch.zeros(2, WIDTH)}, tmp_path / "two.safetensors")
    with pytest.raises(EmbeddingError, match="not a textual-inversion embedding"):
        read_embedding(tmp_path / "two.safetensors")
    save_state_dict({"emb_params": torch.zeros(2, 1024)}, tmp_path / "sd2.safetensors")
    with pytest.raises(EmbeddingError, match="width 1024; this model's text encoder takes 32"):
        load_embedding(model, tmp_path / "sd2.safetensors")
    with pytest.raises(MissingFileError):
        read_embedding(tmp_path / "none.pt")


def tokens_of(model, prompt):
    return model.text_encoder.tokenize([prompt])[0].tolist()


def test_an_embedding_changes_the_context_only_from_its_token_on(model, tmp_path):
    encoder = model.text_encoder
    before = model.encode_text(["a photo of mystyle dog"])
    cat = encoder.model.token_embedding.weight[open_clip.tokenizer._tokenizer.encode("cat")[0]]
    save_state_dict({"emb_params": cat[None].clone()}, tmp_path / "mystyle.safetensors")
    assert load_embedding(model, tmp_path / "mystyle.safetensors") == "mystyle"
    # The trigger's tokens become one placeholder; its vector is the word "cat"'s, so the context is that of
    # the prompt with "cat" written in its place, at every position.
    assert len(tokens_of(model, "a photo of mystyle dog")) == 77
    torch.testing.assert_close(model.encode_text(["a photo of mystyle dog"]), model.encode_text(["a photo of cat dog"]))
    # Another vector: the encoder's input changes at the trigger's position alone, and the causal text
    # transformer's output before it stays as it was.
    tokens = encoder.tokenize(["a photo of otherstyle dog"])
    save_state_dict({"emb_params": torch.randn(1, WIDTH)}, tmp_path / "otherstyle.safetensors")
    load_embedding(model, tmp_path / "otherstyle.safetensors")
    with_embedding = encoder.tokenize(["a photo of otherstyle dog"])
    position = int((with_embedding[0] < 0).nonzero()[0])
    assert position == 4  # start, a, photo, of
    inputs = encoder._token_vectors(with_embedding)
    plain = encoder.model.token_embedding(with_embedding.clamp_min(0))
    changed = (inputs != plain).any(-1)[0].nonzero().flatten().tolist()
    assert changed == [position]
    after = model.encode_text(["a photo of otherstyle dog"])
    reference = encoder.encode_tokens(tokens)  # the prompt as plain tokens (without the embedding)
    torch.testing.assert_close(after[0, :position], reference[0, :position])
    assert not torch.allclose(after[0, position], reference[0, position])
    # A prompt without a trigger is encoded exactly as before any embedding was loaded.
    assert torch.equal(model.encode_text(["a photo of mystyle dog"])[0, :4], before[0, :4])
    assert torch.equal(model.encode_text(["red apple"]), tiny_model().encode_text(["red apple"]))


def test_several_vectors_and_long_prompts(model, tmp_path):
    vectors = torch.randn(3, WIDTH)
    a1111_pt(tmp_path / "tri.pt", vectors)
    load_embedding(model, tmp_path / "tri.pt")
    ids = tokens_of(model, "tri apple")
    assert ids[1:4] == [-1, -2, -3]
    chunked = encode_prompts(model.text_encoder, ["tri apple"], chunking=True)
    torch.testing.assert_close(chunked, model.encode_text(["tri apple"]))


def test_cli_embedding_by_file_name_changes_the_image_and_is_recorded(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    cfg, ckpt = map(str, write_tiny_model_files(tmp_path / "model"))
    folder = tmp_path / "embeddings"
    folder.mkdir()
    save_state_dict({"emb_params": torch.randn(2, WIDTH) * 3}, folder / "sparkle.safetensors")

    def run(out, *extra):
        return main(
            [
                "txt2img",
                "sparkle apple",
                "--config",
                cfg,
                "--ckpt",
                ckpt,
                "--steps",
                "2",
                "--no-progress",
                "--device",
                "cpu",
                "--outdir",
                str(tmp_path / out),
                *extra,
            ]
        )

    assert run("plain") == 0 and run("with", "--embedding", str(folder)) == 0
    image = lambda d: Image.open(tmp_path / d / "samples" / "00000.png")
    assert not np.array_equal(np.asarray(image("plain")), np.asarray(image("with")))
    recorded = json.loads(image("with").text["ldm"])["embeddings"]
    assert [(e["name"], e["vectors"]) for e in recorded] == [("sparkle", 2)]
    assert run("missing", "--embedding", str(tmp_path / "nope.pt")) != 0
    err = capsys.readouterr().err
    assert "embedding file or folder not found" in err and err.strip().count("\n") == 0
