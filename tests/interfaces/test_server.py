"""`ldm serve` as clients meet it: the real server process (tests/server_runner.py) with two tiny models, over HTTP.

A1111's request bodies answered with images that `ldm txt2img --from-png` re-makes bit for bit; concurrent requests
each equal to the same request made alone; the job API's queue (position, cancel, full); hostile bodies answered 4xx
with JSON while the server keeps serving; auth beyond localhost; SIGTERM finishing the running job.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import tiny_model, write_tiny_model_files
from PIL import Image
from server_runner import ServerProcess, decoded, png
from test_controlnet import hint_image, randomised
from test_sdxl import BIG_G, tiny_encoders_node, tiny_unet_params
from test_sdxl import randomise as randomise_sdxl

from ldm.core.config import instantiate, load_config
from ldm.formats.controlnet_files import save_controlnet
from ldm.formats.detect import sd_config_path
from ldm.interfaces.cli.main import main as ldm_main
from ldm.interfaces.server.jobs import Job, JobQueue
from ldm.interfaces.server.run import allowed_hosts, check_exposure
from ldm.interfaces.server.security import LOCAL_HOSTS
from ldm.io.checkpoint import save_state_dict
from ldm.io.control_images import control_image
from ldm.models.controlnet import ControlNet

MODELS = ["--ckpt", "tiny.safetensors", "--ckpt", "tiny2.safetensors", "--ckpt", "base.safetensors", "--ckpt",
          "refiner.safetensors", "--config", "tiny.yaml", "--config", "tiny.yaml", "--config", "", "--config", "",
          "--threads", "1", "--controlnet", "canny.safetensors"]  # fmt: skip
QUEUE = 8
AUTH = "user:secret"
BODY_LIMIT = 400_000
SLOW = {"prompt": "slow", "width": 64, "height": 64, "steps": 40, "seed": 1}  # a few seconds on the tiny model
# A1111's documented examples: the wiki's minimal body, and the body a client sends with every field at its default
# (the fields of A1111's StableDiffusionProcessingTxt2Img API model).
EXAMPLES = [
    {"prompt": "puppy dog", "steps": 3},
    {
        "prompt": "a (red:1.2) heart", "negative_prompt": "blurry", "styles": [], "seed": 7, "subseed": -1,
        "subseed_strength": 0, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": "Euler a",
        "scheduler": "Automatic", "batch_size": 2, "n_iter": 1, "steps": 3, "cfg_scale": 7, "width": 16,
        "height": 16, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
        "do_not_save_grid": False, "eta": None, "denoising_strength": 0, "s_min_uncond": 0, "s_churn": 0,
        "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": True,
        "refiner_checkpoint": None, "refiner_switch_at": None, "disable_extra_networks": False, "comments": {},
        "enable_hr": False, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2, "hr_upscaler": None,
        "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None,
        "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "",
        "force_task_id": None, "sampler_index": "Euler", "script_name": None, "script_args": [], "send_images": True,
        "save_images": False, "alwayson_scripts": {}, "infotext": None,
    },
    {"prompt": "a green star", "seed": 11, "steps": 3, "cfg_scale": 5, "sampler_name": "DPM++ 2M Karras"},
]  # fmt: skip


def tiny_sdxl_model(refiner: bool, seed: int) -> tuple[torch.nn.Module, dict]:
    """test_sdxl's tiny SDXL base or refiner (our SDXL configs at reduced widths) with random weights."""
    node = load_config(sd_config_path("sd_xl_refiner.yaml" if refiner else "sd_xl_base.yaml"))["model"]
    params = node["params"]
    unet = {**tiny_unet_params(micro=5), "context_dim": BIG_G} if refiner else tiny_unet_params()
    params.update(unet_config={**params["unet_config"], "params": unet}, image_size=8)
    params["cond_stage_config"] = tiny_encoders_node(refiner=refiner)
    params["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2])
    torch.manual_seed(seed)
    return randomise_sdxl(instantiate(node), seed), node


def bomb_png(side: int = 30000) -> bytes:
    """A PNG of a few dozen bytes whose header says side x side pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    model = tiny_model(0)
    write_tiny_model_files(root, "tiny", model=model)
    write_tiny_model_files(root, "tiny2", model=tiny_model(seed=1))
    for name, refiner in (("base", False), ("refiner", True)):  # a tiny SDXL base and refiner, configs inside
        sdxl, node = tiny_sdxl_model(refiner, seed=2 + refiner)
        meta = {"ldm_config": json.dumps({"model": node})}
        save_state_dict(sdxl.original_state_dict(), root / f"{name}.safetensors", metadata=meta)
    save_controlnet(
        randomised(ControlNet(model.unet, model.latent_channels, model.downscale), 5), root / "canny.safetensors"
    )
    hint_image(0).save(root / "edges.png")
    return root


@pytest.fixture(scope="module")
def server(folder):
    # Listening beyond loopback, so with a password; answering only to local host names (DNS rebinding).
    args = [*MODELS, "--queue-size", str(QUEUE), "--max-body-bytes", str(BODY_LIMIT), "--max-pixels", "65536",
            "--api-auth", AUTH, "--allowed-hosts", "127.0.0.1", "localhost"]  # fmt: skip
    with ServerProcess(args, folder, host="0.0.0.0", auth=AUTH) as running:
        yield running
        assert "Traceback" not in running.output()  # nothing went wrong that a client did not see


def txt2img(server, body: dict) -> dict:
    status, _, answer = server.call("POST", "/sdapi/v1/txt2img", body)
    assert status == 200, answer
    return answer


def wait_running(server, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = server.call("GET", "/sdapi/v1/progress")[2]["state"]
        if state["sampling_step"] > 0:
            return state
        time.sleep(0.05)
    raise AssertionError("no job started sampling")


def test_a1111_examples_reproduce_from_png(server, folder):
    threads = torch.get_num_threads()
    try:
        for number, body in enumerate(EXAMPLES):
            answer = txt2img(server, body)
            info = json.loads(answer["info"])  # A1111's info is a JSON string
            assert len(answer["images"]) == body.get("batch_size", 1) == len(info["all_seeds"])
            assert answer["parameters"]["prompt"] == body["prompt"]
            for i, image in enumerate(answer["images"]):
                made = folder / f"example-{number}-{i}.png"
                made.write_bytes(decoded(image).fp.getvalue())
                assert decoded(image).text["parameters"] == info["infotexts"][i]
                out = folder / f"again-{number}-{i}"
                argv = ["txt2img", "--from-png", str(made), "--ckpt", str(folder / "tiny.safetensors"), "--config",
                        str(folder / "tiny.yaml"), "--outdir", str(out), "--no-progress", "--threads", "1"]  # fmt: skip
                assert ldm_main(argv) == 0
                again = np.asarray(Image.open(out / "samples" / "00000.png"))
                assert np.array_equal(np.asarray(decoded(image)), again)
    finally:
        torch.set_num_threads(threads)
    seeds = json.loads(txt2img(server, EXAMPLES[1])["info"])["all_seeds"]
    assert seeds == [7, 8]  # image i of a batch is seed + i, as in A1111


def randomised_photo(side: int = 16, seed: int = 0) -> Image.Image:
    """A small picture with edges in it: random blocks of colour."""
    blocks = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((side, side), Image.Resampling.NEAREST)


def remade_from_png(folder: Path, image: str, name: str) -> bool:
    """Whether `ldm txt2img --from-png` (on the tiny model) re-makes the answer's base64 image bit for bit."""
    made = folder / f"{name}.png"
    made.write_bytes(decoded(image).fp.getvalue())
    out = folder / f"{name}-again"
    threads = torch.get_num_threads()
    try:
        argv = ["txt2img", "--from-png", str(made), "--ckpt", str(folder / "tiny.safetensors"), "--config",
                str(folder / "tiny.yaml"), "--outdir", str(out), "--no-progress", "--threads", "1"]  # fmt: skip
        assert ldm_main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return np.array_equal(np.asarray(decoded(image)), np.asarray(Image.open(out / "samples" / "00000.png")))


def test_the_hires_fix_reproduces_from_png(server, folder):
    body = {"prompt": "a red heart", "steps": 3, "seed": 9, "width": 16, "height": 16, "enable_hr": True,
            "hr_scale": 2, "hr_second_pass_steps": 2, "denoising_strength": 0.6, "hr_upscaler": "Latent",
            "hr_sampler_name": "", "hr_prompt": "", "hr_negative_prompt": "", "hr_resize_x": 0, "hr_resize_y": 0,
            "hr_checkpoint_name": None}  # fmt: skip
    answer = txt2img(server, body)
    assert decoded(answer["images"][0]).size == (32, 32)  # the base size times hr_scale
    infotext = json.loads(answer["info"])["infotexts"][0]
    assert "Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent" in infotext
    assert "Denoising strength: 0.6" in infotext
    assert remade_from_png(folder, answer["images"][0], "hires")
    plain = txt2img(server, {**body, "enable_hr": False})["images"][0]
    assert decoded(plain).size == (16, 16)  # without enable_hr its fields are idle
    status, _, answer = server.call("POST", "/sdapi/v1/txt2img", {**body, "override_settings": {
        "sd_model_checkpoint": "base"}})  # fmt: skip
    assert status == 422 and answer["field"] == "enable_hr"  # not for SDXL, as on the command line


def test_tiling_reproduces_from_png(server, folder):
    body = {"prompt": "a tile", "steps": 3, "seed": 6, "width": 16, "height": 16}
    tiled = txt2img(server, {**body, "tiling": True})["images"][0]
    assert tiled != txt2img(server, {**body, "tiling": False})["images"][0]
    assert json.loads(decoded(tiled).text["ldm"])["tiling"] == "xy"  # both axes, as A1111's
    assert remade_from_png(folder, tiled, "tiled")


def test_models_samplers_options_and_switching(server):
    models = server.call("GET", "/sdapi/v1/sd-models")[2]
    titles = ["tiny.safetensors", "tiny2.safetensors", "base.safetensors", "refiner.safetensors"]
    assert [m["title"] for m in models] == titles
    names = [s["name"] for s in server.call("GET", "/sdapi/v1/samplers")[2]]
    assert {"Euler a", "DPM++ 2M", "DDIM"} <= set(names)
    body = {"prompt": "x", "steps": 2, "seed": 3}
    first = txt2img(server, body)["images"][0]
    override = {**body, "override_settings": {"sd_model_checkpoint": "tiny2"}}
    other = txt2img(server, override)["images"][0]
    assert other != first
    assert server.call("GET", "/sdapi/v1/options")[2]["sd_model_checkpoint"] == "tiny.safetensors"  # restored
    assert server.call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "tiny2.safetensors [abc]"})[0] == 200
    try:
        assert server.call("GET", "/sdapi/v1/options")[2]["sd_model_checkpoint"] == "tiny2.safetensors"
        assert txt2img(server, body)["images"][0] == other
        status, _, answer = server.call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "../../etc/passwd"})
        assert status == 422 and answer["field"] == "sd_model_checkpoint"
    finally:
        server.call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "tiny"})
    assert txt2img(server, body)["images"][0] == first


def test_the_sdxl_refiner_hand_off_reproduces_from_png(server, folder):
    body = {"prompt": "a red apple", "steps": 4, "seed": 5, "width": 16, "height": 16, "refiner_checkpoint": "refiner",
            "refiner_switch_at": 0.5}  # fmt: skip
    status, _, answer = server.call("POST", "/sdapi/v1/txt2img", body)  # the tiny model is not SDXL
    assert status == 422 and answer["field"] == "refiner_checkpoint"
    answer = txt2img(server, {**body, "override_settings": {"sd_model_checkpoint": "base"}})
    made = folder / "refined.png"
    made.write_bytes(decoded(answer["images"][0]).fp.getvalue())
    assert "Refiner: refiner, Refiner switch at: 0.5" in json.loads(answer["info"])["infotexts"][0]
    out = folder / "refined-again"
    threads = torch.get_num_threads()
    try:
        models = ["--ckpt", str(folder / "base.safetensors"), "--refiner", str(folder / "refiner.safetensors")]
        argv = ["txt2img", "--from-png", str(made), *models, "--outdir", str(out), "--no-progress", "--threads", "1"]
        assert ldm_main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(
        np.asarray(decoded(answer["images"][0])), np.asarray(Image.open(out / "samples" / "00000.png"))
    )


def a1111_unit(**changes) -> dict:
    """A ControlNet unit as A1111's ControlNet extension's API takes it, every field at the extension's default."""
    unit = {"enabled": True, "image": png(hint_image(0)), "module": "none", "model": "canny [0123abcd]", "weight": 1.0,
            "guidance_start": 0.0, "guidance_end": 1.0, "resize_mode": "Just Resize", "control_mode": "Balanced",
            "processor_res": 512, "threshold_a": 64, "threshold_b": 64, "pixel_perfect": False, "low_vram": False,
            "guess_mode": False, "save_detected_map": True}  # fmt: skip
    return {**unit, **changes}


def test_controlnet_units_match_the_command_lines_control(server, folder):
    assert server.call("GET", "/controlnet/model_list")[2] == {"model_list": ["canny"]}
    body = {"prompt": "a cat", "steps": 3, "seed": 4, "width": 16, "height": 16}
    plain = txt2img(server, body)["images"][0]
    unit = a1111_unit(weight=0.8, guidance_end=0.6, control_mode="My prompt is more important")
    controlled = txt2img(server, {**body, "alwayson_scripts": {"ControlNet": {"args": [unit]}}})["images"][0]
    assert controlled != plain
    assert 'ControlNet 0: "Module: none, Model: canny, Weight: 0.8' in decoded(controlled).text["parameters"]
    out = folder / "controlled"
    threads = torch.get_num_threads()
    try:
        argv = ["txt2img", "a cat", "--steps", "3", "--seed", "4", "--height", "16", "--width", "16", "--long-prompts",
                "--emphasis", "--ckpt", str(folder / "tiny.safetensors"), "--config", str(folder / "tiny.yaml"),
                "--control", f"{folder / 'edges.png'}:{folder / 'canny.safetensors'}:0.8:0:0.6", "--control-mode",
                "prompt", "--outdir", str(out), "--no-progress", "--threads", "1"]  # fmt: skip
        assert ldm_main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.asarray(decoded(controlled)), np.asarray(Image.open(out / "samples" / "00000.png")))
    disabled = {"controlnet": {"args": [a1111_unit(enabled=False)]}}  # keys match case-insensitively
    assert txt2img(server, {**body, "alwayson_scripts": disabled})["images"][0] == plain
    photo = randomised_photo()  # the extension's canny preprocessor: Canny's edges at processor_res
    edges = control_image(photo.resize((64, 64), Image.Resampling.BICUBIC), "canny", 50, 150)
    preprocessed = a1111_unit(image=png(edges))
    by_module = a1111_unit(image=png(photo), module="canny", processor_res=64, threshold_a=50, threshold_b=150)
    assert txt2img(server, {**body, "alwayson_scripts": {"ControlNet": {"args": [by_module]}}})["images"] == txt2img(
        server, {**body, "alwayson_scripts": {"ControlNet": {"args": [preprocessed]}}})["images"]  # fmt: skip
    for unit, field in ((a1111_unit(module="lineart_realistic"), "module"), (a1111_unit(model="depth"), "model"),
                        (a1111_unit(guess_mode=True), "guess_mode")):  # fmt: skip
        status, _, answer = server.call("POST", "/sdapi/v1/txt2img", {**body, "alwayson_scripts": {"ControlNet": {
            "args": [unit]}}})  # fmt: skip
        assert status == 422 and answer["field"] == f"alwayson_scripts.ControlNet.args[0].{field}", answer


def test_img2img_and_inpainting(server):
    photo = Image.new("RGB", (16, 16), (200, 40, 40))
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (4, 4, 12, 12))
    body = {"prompt": "x", "steps": 4, "seed": 2, "init_images": [png(photo)], "denoising_strength": 0.5,
            "mask_blur": 4, "inpaint_full_res": True, "inpainting_fill": 0, "resize_mode": 0}  # fmt: skip
    status, _, answer = server.call("POST", "/sdapi/v1/img2img", body)  # no mask: the inpainting fields are idle
    assert status == 200, answer
    assert decoded(answer["images"][0]).size == (16, 16)
    assert json.loads(decoded(answer["images"][0]).text["ldm"])["strength"] == 0.5
    masked = {**body, "mask": png(mask), "inpaint_full_res": False, "inpainting_fill": 1}
    status, _, answer = server.call("POST", "/sdapi/v1/img2img", masked)
    assert status == 200, answer
    result = np.asarray(decoded(answer["images"][0])).astype(int)
    assert np.abs(result[0, 0] - [200, 40, 40]).max() <= 8  # outside the hole the photo stays
    only_masked = {**masked, "inpaint_full_res": True, "inpaint_full_res_padding": 2}  # A1111's "Only masked"
    status, _, answer = server.call("POST", "/sdapi/v1/img2img", only_masked)
    assert status == 200, answer
    made = decoded(answer["images"][0])
    assert json.loads(made.text["ldm"])["inpaint_area"] == "masked" and "Masked area padding: 2" in made.text[
        "parameters"]  # fmt: skip
    outside = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(made)[outside], np.asarray(photo)[outside])  # pasted back through the mask only
    status, _, answer = server.call("POST", "/sdapi/v1/img2img", {**only_masked, "width": 512, "height": 512})
    assert status == 422 and answer["field"] == "width"  # the crop is drawn at the model's own size


def test_concurrent_requests_each_equal_alone(server):
    bodies = [{"prompt": f"emoji {i}", "steps": 2, "seed": 100 + i, "batch_size": 1 + i % 2} for i in range(8)]
    together: dict[int, list[str]] = {}

    def send(i: int) -> None:
        together[i] = txt2img(server, bodies[i])["images"]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(together) == list(range(8))
    for i, body in enumerate(bodies):
        assert txt2img(server, body)["images"] == together[i]
    assert together[0] != together[2]


def test_job_api_queue_progress_cancel_and_full(server):
    status, _, slow = server.call("POST", "/ldm/v1/jobs/txt2img", SLOW)
    assert status == 202 and slow["status"] in ("queued", "running")
    state = wait_running(server)
    assert state["job"] == slow["id"] and 0 < state["sampling_step"] <= state["sampling_steps"]
    waiting = [server.call("POST", "/ldm/v1/jobs/txt2img", {"prompt": "q", "steps": 2})[2] for _ in range(QUEUE)]
    assert [job["position"] for job in waiting] == list(range(1, QUEUE + 1))
    status, headers, answer = server.call("POST", "/ldm/v1/jobs/txt2img", {"prompt": "one too many"})
    assert status == 503 and headers["retry-after"] and answer["error"] == "queue full"
    cancelled = waiting[0]["id"]
    assert server.call("DELETE", f"/ldm/v1/jobs/{cancelled}")[2]["cancelled"] is True
    assert server.call("GET", f"/ldm/v1/jobs/{waiting[1]['id']}")[2]["position"] == 1
    status, _, answer = server.call("GET", f"/ldm/v1/jobs/{slow['id']}/result")
    assert status == 409 and answer["error"] == "not finished"
    for job in waiting[1:]:
        server.call("DELETE", f"/ldm/v1/jobs/{job['id']}")
    assert server.call("POST", "/sdapi/v1/interrupt", {})[0] == 200  # A1111's interrupt stops the running job
    for job in [slow, *waiting]:
        while server.call("GET", f"/ldm/v1/jobs/{job['id']}")[2]["status"] in ("queued", "running"):
            time.sleep(0.05)
    final = server.call("GET", f"/ldm/v1/jobs/{cancelled}")[2]
    assert final["status"] == "cancelled" and final["started"] is None  # it never ran
    status, _, answer = server.call("GET", f"/ldm/v1/jobs/{cancelled}/result")
    assert status == 409 and "before it ran" in answer["detail"]
    assert "interrupted" in server.call("GET", f"/ldm/v1/jobs/{slow['id']}/result")[2]["detail"]
    status, _, done = server.call("POST", "/ldm/v1/jobs/txt2img", {"prompt": "fine", "steps": 2})
    while server.call("GET", f"/ldm/v1/jobs/{done['id']}")[2]["status"] != "done":
        time.sleep(0.05)
    assert len(server.call("GET", f"/ldm/v1/jobs/{done['id']}/result")[2]["images"]) == 1


def test_a_disconnected_clients_queued_job_is_dropped(server):
    slow = server.call("POST", "/ldm/v1/jobs/txt2img", SLOW)[2]
    wait_running(server)
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        body = json.dumps({"prompt": "gone", "steps": 2}).encode()
        auth = base64.b64encode(AUTH.encode())
        head = b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        client.sendall(head + b"Authorization: Basic %s\r\nContent-Length: %d\r\n\r\n%s" % (auth, len(body), body))
        deadline = time.monotonic() + 10
        while server.call("GET", "/sdapi/v1/progress")[2]["state"]["queue_size"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    deadline = time.monotonic() + 10
    while "dropped job" not in server.output():
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    assert server.call("GET", "/sdapi/v1/progress")[2]["state"]["queue_size"] == 0
    server.call("DELETE", f"/ldm/v1/jobs/{slow['id']}")


def hostile_cases() -> list[tuple[str, str, object]]:
    """(route, what it is, body: a dict, or bytes sent as they are)."""
    t2i, i2i = "/sdapi/v1/txt2img", "/sdapi/v1/img2img"
    photo = png(Image.new("RGB", (16, 16)))
    return [
        (t2i, "bad JSON", b"{bad"), (t2i, "empty body", b""), (t2i, "a list", [1, 2]),
        (t2i, "NaN", b'{"cfg_scale": NaN}'), (t2i, "nested deep", b"[" * 100_000 + b"]" * 100_000),
        (t2i, "steps as text", {"steps": "3"}), (t2i, "negative steps", {"steps": -3}),
        (t2i, "zero steps", {"steps": 0}),
        (t2i, "too many steps", {"steps": 100_000}), (t2i, "steps as a bool", {"steps": True}),
        (t2i, "fractional steps", {"steps": 2.5}), (t2i, "30000x30000", {"width": 30000, "height": 30000}),
        (t2i, "width 17", {"width": 17}), (t2i, "seed as text", {"seed": "abc"}), (t2i, "huge seed", {"seed": 2**70}),
        (t2i, "infinite scale", b'{"cfg_scale": 1e999}'), (t2i, "unknown sampler", {"sampler_name": "Foo"}),
        (t2i, "unknown scheduler", {"sampler_name": "Euler", "scheduler": "Bogus"}),
        (t2i, "unknown field", {"prompt": "x", "hack": 1}), (t2i, "prompt as a number", {"prompt": 123}),
        (t2i, "prompt too long", {"prompt": "x" * 100_000}), (t2i, "batch of 1000", {"batch_size": 1000}),
        (t2i, "restore faces", {"restore_faces": True}),
        (t2i, "an upscaler we lack", {"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}),
        (t2i, "a hires target size", {"enable_hr": True, "hr_resize_x": 64}),
        (t2i, "a hires prompt", {"enable_hr": True, "prompt": "x", "hr_prompt": "y"}),
        (t2i, "an extension", {"alwayson_scripts": {"ADetailer": {"args": [{"ad_model": "face"}]}}}),
        (t2i, "a path as model", {"override_settings": {"sd_model_checkpoint": "/etc/passwd"}}),
        (t2i, "unknown override", {"override_settings": {"sd_vae": "x.safetensors"}}),
        (t2i, "a script", {"script_name": "../../x.py"}),
        (i2i, "a path as image", {"init_images": ["/etc/passwd"]}),
        (i2i, "not base64", {"init_images": ["not base64!!"]}),
        (i2i, "base64 of text", {"init_images": [base64.b64encode(b"hello").decode()]}),
        (i2i, "30000x30000 PNG", {"init_images": [base64.b64encode(bomb_png()).decode()]}),
        (i2i, "no image", {"prompt": "x"}), (i2i, "strength 5", {"init_images": [photo], "denoising_strength": 5}),
        (i2i, "mask of another size", {"init_images": [photo], "mask": png(Image.new("L", (8, 8)))}),
        (t2i, "body over the limit", {"prompt": "x", "styles": ["y" * BODY_LIMIT]}),
        ("/sdapi/v1/png-info", "png-info of text", {"image": base64.b64encode(b"text").decode()}),
        ("/sdapi/v1/options", "unknown option", {"sd_vae": "x"}), ("/ldm/v1/jobs/upscale", "no such job route", {}),
    ]  # fmt: skip


def test_hostile_bodies_get_4xx_json_and_the_server_keeps_serving(server):
    cases = hostile_cases()
    assert len(cases) >= 30
    for route, what, body in cases:
        raw = body if isinstance(body, bytes) else None
        status, _, answer = server.call("POST", route, None if raw is not None else body, raw=raw)
        assert 400 <= status < 500, (what, status, answer)
        assert isinstance(answer, dict) and answer.get("error") and answer.get("detail"), (what, answer)
        assert "Traceback" not in json.dumps(answer)
    status, _, answer = server.call(
        "POST", "/sdapi/v1/txt2img", None, raw=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert status == 415 and answer["error"]
    status, _, answer = server.call("GET", "/ldm/v1/health", headers={"Host": "attacker.example"})  # DNS rebinding
    assert status == 400 and "attacker.example" in answer["detail"]
    status, headers, _ = server.call("GET", "/ldm/v1/health", headers={"Origin": "https://example.com"})
    assert status == 200 and "access-control-allow-origin" not in headers  # no CORS unless asked for
    assert server.call("GET", "/ldm/v1/jobs/no-such-job")[0] == 404
    assert len(txt2img(server, {"prompt": "still serving", "steps": 2})["images"]) == 1


def test_a_job_past_the_time_limit_stops_at_its_next_step_and_the_worker_goes_on():
    queue = JobQueue(max_waiting=2, keep=8, max_job_seconds=0.05)
    queue.start()

    def endless(job: Job) -> None:
        while True:
            job.check_stop()  # what the sampler's step callback does
            time.sleep(0.01)

    stuck, after = queue.submit(Job(run=endless)), queue.submit(Job(run=lambda job: "made"))
    assert after.done.wait(10)
    assert stuck.status == "failed" and stuck.error[0] == 503 and "limit of 0.05 s" in stuck.error[1]
    assert after.status == "done" and after.result == "made"
    queue.close()
    queue.join(5)


def test_listening_beyond_localhost_needs_auth(capsys):
    assert ldm_main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "--api-auth" in capsys.readouterr().err
    assert allowed_hosts("127.0.0.1", None) == LOCAL_HOSTS and allowed_hosts("0.0.0.0", None) is None
    check_exposure("0.0.0.0", None, insecure=True)  # said out loud: allowed


def test_auth_is_checked_on_every_route(server):
    try:
        server.auth = None
        status, headers, answer = server.call("GET", "/sdapi/v1/sd-models")
        assert status == 401 and headers["www-authenticate"].startswith("Basic") and answer["error"]
        server.auth = "user:wrong"
        assert server.call("POST", "/sdapi/v1/txt2img", {"prompt": "x"})[0] == 401
    finally:
        server.auth = AUTH
    assert server.call("GET", "/sdapi/v1/sd-models")[0] == 200


def test_sigterm_finishes_the_running_job(server):  # last: it stops the module's server
    answers = []
    running = threading.Thread(target=lambda: answers.append(server.call("POST", "/sdapi/v1/txt2img", SLOW)))
    running.start()
    wait_running(server)
    server.process.send_signal(signal.SIGTERM)
    running.join(120)
    assert server.process.wait(60) == 0
    status, _, answer = answers[0]
    assert status == 200 and len(answer["images"]) == 1  # the running job finished and was answered
    with pytest.raises(OSError):
        server.call("GET", "/ldm/v1/health", timeout=5)  # and nothing more is served
