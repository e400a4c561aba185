"""LoRA (ldm.adapters.lora): adapters that train alone, files applied or merged at a weight, the kohya / A1111 layout."""

import copy
import json

import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from ldm.adapters.lora import (
    LoraError,
    add_lora,
    apply_lora,
    lora_state_dict,
    merge_adapter,
    merge_lora,
    parse_lora_spec,
    read_lora,
    remove_lora,
    save_lora,
)
from ldm.adapters.lora_layers import HOST_TYPES, model_targets
from ldm.core.errors import MissingFileError
from ldm.formats.load import load_model
from ldm.interfaces.cli.main import main
from ldm.io.checkpoint import save_state_dict
from ldm.tasks.txt2img import txt2img

try:  # the arch refactor moves the factories from ldm/testing.py to tests/factories.py
    from factories import tiny_config, tiny_model
except ImportError:
    from ldm.testing import tiny_config, tiny_model

T = torch.tensor([10, 600])


@pytest.fixture(scope="module")
def base():
    return tiny_model()


def fresh(base):
    return copy.deepcopy(base)


def unet_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), T, torch.randn(2, 77, 32, generator=g)


def outputs(model, prompts=("a cat", "red apple")):
    """The U-Net's output and the text encoder's context: the two networks a LoRA changes."""
    x, t, c = unet_inputs()
    with torch.no_grad():
        return model.unet(x, t, c), model.encode_text(list(prompts))


def random_lora(base, path, targets=("attn", "conv", "text"), rank=2, alpha=3.0, seed=1):
    """A LoRA file of the given targets with random (non-zero) up and down weights."""
    model = fresh(base)
    add_lora(model, targets, rank=rank, alpha=alpha)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name:
                p.normal_(0, 0.1)
    save_lora(model, path)
    return path


def expected_count(model, targets, rank):
    total = 0
    for t in model_targets(model, targets).values():
        m = model.get_submodule(t.path)
        if t.slot is not None:
            total += rank * 2 * m.embed_dim
        elif isinstance(m, nn.Conv2d):
            total += rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
        else:
            total += rank * (m.in_features + m.out_features)
    return total


def test_rank_r_adds_exactly_its_parameters_and_training_moves_only_them(base):
    model = fresh(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_before = sum(p.numel() for p in model.parameters())
    targets, rank = ("attn", "conv", "text"), 3
    add_lora(model, targets, rank=rank, alpha=6, dropout=0.1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == expected_count(base, targets, rank)
    assert sum(p.numel() for p in model.parameters()) == n_before + expected_count(base, targets, rank)
    assert set(before) <= set(model.state_dict())  # the base keeps its keys
    saved = lora_state_dict(model)  # the adapters alone: down, up and alpha per target
    assert len(saved) == 3 * len(model_targets(base, targets))
    assert sum(v.numel() for k, v in saved.items() if not k.endswith(".alpha")) == expected_count(base, targets, rank)

    model.train()
    opt = torch.optim.SGD(trainable, lr=0.1)
    x, t, _ = unet_inputs()
    tokens = model.text_encoder.tokenize(["a cat", "a dog"])
    for _ in range(3):  # the text encoder through encode_tokens: encode_text itself runs without gradients
        loss = model.unet(x, t, model.text_encoder.encode_tokens(tokens)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    lora = lora_state_dict(model)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if k.endswith("lora_up.weight") and ".attn" in k)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if k.endswith("lora_up.weight") and "in_proj_q" in k)


def test_new_adapter_changes_nothing_and_removing_it_gives_the_base_modules_back(base):
    model = fresh(base)
    types = {name: type(m) for name, m in model.named_modules()}
    add_lora(model, ("attn", "proj", "ff", "conv", "text"), rank=2)
    assert all(torch.equal(a, b) for a, b in zip(outputs(model), outputs(base)))  # up starts at zero
    remove_lora(model)
    assert {name: type(m) for name, m in model.named_modules()} == types
    assert not any(isinstance(m, HOST_TYPES) for m in model.modules())
    assert set(model.state_dict()) == set(base.state_dict())


def test_weight_zero_is_the_base_model_bit_for_bit(base, tmp_path):
    path = random_lora(base, tmp_path / "style.safetensors")
    model = fresh(base)
    apply_lora(model, path, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(outputs(model), outputs(base)))
    apply_lora(model, path, 1.0)
    assert not torch.equal(outputs(model)[0], outputs(base)[0])
    remove_lora(model)
    assert all(torch.equal(a, b) for a, b in zip(outputs(model), outputs(base)))


def final_denoised(model, **kw):
    seen = {}
    txt2img(
        model,
        ["a cat", "smiling face"],
        height=16,
        width=16,
        steps=3,
        seed=2,
        progress=False,
        callback=lambda d: seen.update(x=d["denoised"]),
        **kw,
    )
    return seen["x"]


def test_merging_equals_applying_to_float32_precision(base, tmp_path):
    a = random_lora(base, tmp_path / "a.safetensors", seed=1)
    b = random_lora(base, tmp_path / "b.safetensors", targets=("attn", "ff", "proj"), rank=4, alpha=2, seed=2)
    applied, merged = fresh(base), fresh(base)
    apply_lora(applied, a, 0.7)
    apply_lora(applied, b, -0.4)  # several at once, one subtracted
    merge_lora(merged, a, 0.7)
    merge_lora(merged, b, -0.4)
    assert not any(isinstance(m, HOST_TYPES) for m in merged.modules())
    for got, want, ref in zip(outputs(merged), outputs(applied), outputs(base)):
        assert (want - ref).abs().max() > 1e-2  # the LoRAs do change the output
        torch.testing.assert_close(got, want, rtol=1e-5, atol=5e-5)
    # float32 sums in another order (merged weight vs. base + low-rank path): 1.4e-5 seen with two AVX2 threads
    torch.testing.assert_close(final_denoised(merged), final_denoised(applied), rtol=1e-5, atol=5e-5)
    assert merged.identity["loras"][0]["merged"] and applied.identity["loras"][1]["weight"] == -0.4


def test_own_file_round_trip_with_config_in_metadata(base, tmp_path):
    model = fresh(base)
    names = add_lora(model, ("attn", "text"), rank=2, alpha=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name:
                p.normal_(0, 0.1)
    path = tmp_path / "mine.safetensors"
    save_lora(model, path)
    weights = read_lora(path, base)
    assert set(weights.modules) == set(names)
    assert weights.metadata["format"] == "ldm-lora" and json.loads(weights.metadata["rank"]) == 2
    assert json.loads(weights.metadata["targets"]) == ["attn", "text"] and len(weights.sha256) == 64
    loaded = fresh(base)
    apply_lora(loaded, weights)
    for got, want in zip(outputs(loaded), outputs(model)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    trained = copy.deepcopy(model)
    merge_adapter(trained)  # the trained adapter baked in: same function, plain modules
    assert not any(isinstance(m, HOST_TYPES) for m in trained.modules())
    torch.testing.assert_close(outputs(trained)[0], outputs(model)[0], rtol=1e-5, atol=1e-5)


# kohya names -> where this project keeps those modules in the tiny model (num_res_blocks 1, channel_mult [1, 2],
# attention at level 1 only): input_blocks 1 = level 0's res block, 2 its downsampler, 3 level 1's res block +
# transformer; output_blocks 0-1 = level 1 (upsampler at position 2 of block 1), 2-3 = level 0.
KOHYA_UNET = {
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": "unet.input_blocks.3.1.transformer_blocks.0.attn1.to_q",  # noqa: E501
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0": "unet.middle_block.1.transformer_blocks.0.attn2.to_out.0",  # noqa: E501
    "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_2": "unet.output_blocks.1.1.transformer_blocks.0.ff.net.2",  # noqa: E501
    "lora_unet_up_blocks_0_upsamplers_0_conv": "unet.output_blocks.1.2.conv",
    "lora_unet_down_blocks_1_resnets_0_conv_shortcut": "unet.input_blocks.3.0.skip_connection",
    "lora_unet_up_blocks_1_resnets_1_time_emb_proj": "unet.output_blocks.3.0.emb_layers.1",
}


def low_rank(out_shape, in_shape, rank, kernel=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    down = torch.randn(rank, in_shape, *kernel, generator=g) * 0.2
    up = torch.randn(out_shape, rank, *((1, 1) if kernel else ()), generator=g) * 0.2
    return down, up


def kohya_file(base, path, extra=None):
    """A kohya-layout file with known updates; returns it with {parameter name: [(rows, delta), ...]}."""
    state, expected = {}, {}
    rank, alpha = 2, 1.0
    for i, (stem, ours) in enumerate(KOHYA_UNET.items()):
        weight = base.get_submodule(ours).weight
        kernel = tuple(weight.shape[2:]) if weight.ndim == 4 else ()
        down, up = (t.half() for t in low_rank(weight.shape[0], weight.shape[1], rank, kernel, seed=i))
        state.update(
            {
                f"{stem}.lora_down.weight": down,
                f"{stem}.lora_up.weight": up,
                f"{stem}.alpha": torch.tensor(alpha).half(),
            }
        )
        delta = (up.float().flatten(1) @ down.float().flatten(1)).reshape(weight.shape) * alpha / rank
        expected[ours + ".weight"] = [(slice(None), delta)]
    attn = "text_encoder.model.transformer.resblocks.1.attn.in_proj_weight"
    for j, (proj, rows) in enumerate([("q_proj", slice(0, 32)), ("v_proj", slice(64, 96))]):
        stem = f"lora_te_text_model_encoder_layers_1_self_attn_{proj}"
        down, up = low_rank(32, 32, 4, seed=10 + j)  # no .alpha: scale 1
        state.update({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up})
        expected.setdefault(attn, []).append((rows, up @ down))
    state.update(extra or {})
    save_state_dict(state, path)
    return path, expected


def test_kohya_file_lands_on_the_right_modules_and_reproduces_its_update(base, tmp_path):
    path, expected = kohya_file(base, tmp_path / "kohya.safetensors")
    merged = fresh(base)
    merge_lora(merged, path, 1.0)
    want = {k: v.clone() for k, v in base.state_dict().items()}
    for key, changes in expected.items():
        for rows, delta in changes:
            want[key][rows] += delta
    got = merged.state_dict()
    changed = {k for k in want if not torch.equal(got[k], base.state_dict()[k])}
    assert changed == set(expected)  # those modules and no other
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-6)
    applied = fresh(base)
    apply_lora(applied, path)
    for a, b in zip(outputs(applied), outputs(merged)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {
                "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 64),
                "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": torch.zeros(64, 2),
            },
            "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight names no LoRA-able module",
        ),
        (
            {"lora_unet_mid_block_attentions_0_proj_in.hada_w1_a": torch.zeros(2, 2)},
            "unknown key lora_unet_mid_block_attentions_0_proj_in.hada_w1_a",
        ),
        (
            {
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 31),
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(128, 2),
            },
            "lora_te_text_model_encoder_layers_0_mlp_fc1: lora_down (2, 31) and lora_up (128, 2) do not fit",
        ),
        (
            {"lora_te_text_model_encoder_layers_0_mlp_fc2.lora_down.weight": torch.zeros(2, 128)},
            "lora_te_text_model_encoder_layers_0_mlp_fc2 has no lora_up.weight",
        ),
    ],
)
def test_unknown_or_mismatched_key_is_a_one_line_error_naming_it(base, tmp_path, extra, message):
    path, _ = kohya_file(base, tmp_path / "bad.safetensors", extra)
    with pytest.raises(LoraError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        apply_lora(fresh(base), path)
    assert "\n" not in str(info.value)


def test_lora_spec_parsing(tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"")
    assert parse_lora_spec(str(f)) == (str(f), 1.0)
    assert parse_lora_spec(f"{f}:-0.5") == (str(f), -0.5)
    with pytest.raises(LoraError, match="finite"):
        parse_lora_spec(f"{f}:nan")
    with pytest.raises(MissingFileError):
        parse_lora_spec(f"{tmp_path}/nope.safetensors:1")


def test_bad_hyperparameters_and_targets(base):
    with pytest.raises(LoraError, match="unknown LoRA target 'attention'"):
        add_lora(fresh(base), ["attention"])
    with pytest.raises(LoraError, match="rank"):
        add_lora(fresh(base), rank=0)
    model = fresh(base)
    assert add_lora(model, "attn") == list(model_targets(base, ["attn"]))
    with pytest.raises(LoraError, match="already has"):
        add_lora(model)


def test_txt2img_applies_loras_for_one_call_only(base, tmp_path):
    path = random_lora(base, tmp_path / "style.safetensors")
    plain = txt2img(base, "a cat", height=16, width=16, steps=2, seed=1, progress=False)[0]
    zero = txt2img(base, "a cat", height=16, width=16, steps=2, seed=1, progress=False, loras=[(str(path), 0.0)])[0]
    styled = txt2img(base, "a cat", height=16, width=16, steps=2, seed=1, progress=False, loras=[(str(path), 1.0)])[0]
    assert plain.tobytes() == zero.tobytes() and plain.tobytes() != styled.tobytes()
    assert not any(isinstance(m, HOST_TYPES) for m in base.modules()) and not base.identity.get("loras")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, base):
    d = tmp_path_factory.mktemp("tiny")
    cfg, ckpt = d / "tiny.yaml", d / "tiny.safetensors"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    save_state_dict(base.original_state_dict(), ckpt)
    return ["--config", str(cfg), "--ckpt", str(ckpt)]


def run_cli(model_files, out, *extra):
    return main(
        [
            "txt2img",
            "a cat",
            *model_files,
            "--steps",
            "2",
            "--height",
            "16",
            "--width",
            "16",
            "--no-progress",
            "--outdir",
            str(out),
            *extra,
        ]
    )


def test_cli_applies_several_loras_and_records_them(base, model_files, tmp_path):
    a = random_lora(base, tmp_path / "a.safetensors")
    b, _ = kohya_file(base, tmp_path / "b.safetensors")
    assert run_cli(model_files, tmp_path / "plain") == 0
    assert run_cli(model_files, tmp_path / "zero", "--lora", f"{a}:0") == 0
    assert run_cli(model_files, tmp_path / "two", "--lora", f"{a}:0.8", "--lora", str(b)) == 0
    image = lambda d: Image.open(tmp_path / d / "samples" / "00000.png")
    assert image("zero").tobytes() == image("plain").tobytes()
    assert image("two").tobytes() != image("plain").tobytes()
    loras = json.loads(image("two").text["ldm"])["loras"]
    assert [(x["file"], x["weight"]) for x in loras] == [("a.safetensors", 0.8), ("b.safetensors", 1.0)]


def test_cli_unknown_key_exits_non_zero_with_one_line(base, model_files, tmp_path, capsys):
    bad, _ = kohya_file(
        base,
        tmp_path / "bad.safetensors",
        {
            "lora_unet_up_blocks_5_resnets_0_conv1.lora_down.weight": torch.zeros(2, 64, 3, 3),
            "lora_unet_up_blocks_5_resnets_0_conv1.lora_up.weight": torch.zeros(64, 2, 1, 1),
        },
    )
    code = run_cli(model_files, tmp_path / "out", "--lora", f"{bad}:0.5")
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "lora_unet_up_blocks_5_resnets_0_conv1" in err
    assert not (tmp_path / "out" / "samples" / "00000.png").exists()
    assert run_cli(model_files, tmp_path / "out", "--lora", str(tmp_path / "missing.safetensors")) != 0
    assert "LoRA file not found" in capsys.readouterr().err


def test_convert_merge_lora_writes_a_model_that_loads_alone_and_equals_applying(base, model_files, tmp_path, capsys):
    a = random_lora(base, tmp_path / "a.safetensors", seed=3)
    b, _ = kohya_file(base, tmp_path / "b.safetensors")
    cfg, ckpt = model_files[1], model_files[3]
    merged_file = tmp_path / "merged.safetensors"
    assert (
        main(["convert", ckpt, str(merged_file), "--config", cfg, "--merge-lora", f"{a}:0.6", "--merge-lora", str(b)])
        == 0
    )
    merged = load_model(checkpoint=merged_file, device="cpu")  # its config travels in the metadata
    applied = fresh(base)
    apply_lora(applied, a, 0.6)
    apply_lora(applied, b, 1.0)
    for got, want, ref in zip(outputs(merged), outputs(applied), outputs(base)):
        assert (want - ref).abs().max() > 1e-2
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    from safetensors import safe_open

    with safe_open(str(merged_file), framework="pt") as f:
        recorded = json.loads(f.metadata()["merged_loras"])
    assert [(x["file"], x["weight"]) for x in recorded] == [("a.safetensors", 0.6), ("b.safetensors", 1.0)]
    # Nothing is overwritten by accident, and a missing LoRA is one line.
    assert main(["convert", ckpt, str(merged_file), "--config", cfg, "--merge-lora", str(a)]) != 0
    assert "already exists" in capsys.readouterr().err
    assert (
        main(["convert", ckpt, str(tmp_path / "m2.safetensors"), "--merge-lora", str(tmp_path / "no.safetensors")]) != 0
    )
    err = capsys.readouterr().err
    assert "LoRA file not found" in err and err.strip().count("\n") == 0
