"""rpc_synth.render: networks, losses, training (determinism, checkpoints, resume), apply, histogram, measures."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rpc_metrics.io import FormatError, read_instances  # noqa: E402
from rpc_synth.generate import InputError  # noqa: E402
from rpc_synth.render.apply import IMAGES_DIR, INSTANCES, render_dataset, translate_image  # noqa: E402
from rpc_synth.render.data import SourceImages, training_batch  # noqa: E402
from rpc_synth.render.histogram import channel_histograms, match_histograms  # noqa: E402
from rpc_synth.render.losses import lsgan_loss, preservation_loss  # noqa: E402
from rpc_synth.render.measure import (  # noqa: E402
    domain_gap,
    frechet_distance,
    image_features,
    measure_render,
    product_changes,
)
from rpc_synth.render.networks import PatchDiscriminator, ResnetGenerator  # noqa: E402
from rpc_synth.render.train import (  # noqa: E402
    TranslatorConfig,
    load_checkpoint,
    load_generator,
    load_translator,
    train_translator,
)

TINY = TranslatorConfig(size=32, iters=2, gen_channels=4, gen_blocks=1, disc_channels=4, disc_layers=2,
                        checkpoint_every=1)


def _train(tiny_world, tiny_generate, out, config=TINY):
    return train_translator(tiny_generate / "synth2019", tiny_generate / "instances_synth2019.json",
                            tiny_world / "val2019", out, config, threads=1, progress=False)


def _weights(path):
    return load_checkpoint(path)["networks"]


def _equal_states(a, b):
    return all(torch.equal(a[net][k], b[net][k]) for net in a for k in a[net])


@pytest.fixture(scope="module")
def tiny_model(tiny_world, tiny_generate, tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "model.pt"
    _train(tiny_world, tiny_generate, out)
    return out


# ------------------------------------------------------------------------------------------- networks


@pytest.mark.parametrize("residual", [True, False])
def test_generator_keeps_shape_and_range(residual):
    net = ResnetGenerator(channels=4, blocks=1, residual=residual)
    y = net(torch.rand(2, 3, 32, 48) * 2 - 1)
    assert y.shape == (2, 3, 32, 48) and y.min() >= -1 and y.max() <= 1


def test_noise_level_is_fixed_by_default_or_learned():
    fixed = ResnetGenerator(channels=4, blocks=1, noise=True, noise_init=2.0)
    learned = ResnetGenerator(channels=4, blocks=1, noise=True, noise_init=2.0, noise_learned=True)
    assert "noise_scale" in dict(fixed.named_buffers()) and "noise_scale" not in dict(fixed.named_parameters())
    assert "noise_scale" in dict(learned.named_parameters())
    # the same state-dict key either way: a checkpoint of one loads into the other
    fixed.load_state_dict(learned.state_dict())
    torch.testing.assert_close(fixed.noise_scale, torch.full((1, 3, 1, 1), 2.0 / 127.5))


@pytest.mark.parametrize("learned", [False, True])
def test_noise_injection_is_scaled_and_seeded(learned):
    torch.manual_seed(0)
    net = ResnetGenerator(channels=4, blocks=1, noise=True, noise_learned=learned)
    quiet = ResnetGenerator(channels=4, blocks=1)
    quiet.load_state_dict({k: v for k, v in net.state_dict().items() if k != "noise_scale"})
    x = torch.rand(1, 3, 64, 64) * 0.5 - 0.25  # away from the clamp
    torch.testing.assert_close(net(x), quiet(x))  # a level of 0: no noise
    with torch.no_grad():
        net.noise_scale.copy_(torch.tensor([0.0, 0.1, 0.2]).view(1, 3, 1, 1))
    a = net(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, net(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, net(x, torch.Generator().manual_seed(6)))
    added = (a - quiet(x))[0].flatten(1).std(dim=1)
    torch.testing.assert_close(added, torch.tensor([0.0, 0.1, 0.2]), atol=0.01, rtol=0.05)
    torch.testing.assert_close(net(x, add_noise=False), quiet(x))  # what the content losses compare
    start = ResnetGenerator(channels=4, blocks=1, noise=True, noise_init=2.0).noise_scale
    torch.testing.assert_close(start, torch.full((1, 3, 1, 1), 2.0 / 127.5))


def test_discriminator_scores_patches():
    assert PatchDiscriminator(channels=4, layers=3)(torch.zeros(1, 3, 96, 96)).shape == (1, 1, 10, 10)
    assert PatchDiscriminator(channels=4, layers=2)(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 6, 6)


def test_bad_sizes_name_the_argument():
    with pytest.raises(ValueError, match="channels"):
        ResnetGenerator(channels=0)
    with pytest.raises(ValueError, match="multiple of 8"):
        TranslatorConfig(size=36)


def test_translate_whole_image_of_odd_size(tiny_model):
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = translate_image(load_generator(tiny_model), image)
    assert out.shape == image.shape and out.dtype == np.uint8


def _translate_reference(generator, image: np.ndarray, seed: int) -> np.ndarray:
    """The generator's own forward (noise included) on the reflection-padded image, cropped back: float32."""
    x = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1)[None].float() / 127.5 - 1
    h, w = image.shape[:2]
    m = generator.multiple
    with torch.no_grad():
        x = torch.nn.functional.pad(x, (0, -w % m, 0, -h % m), mode="reflect")
        y = generator(x, torch.Generator().manual_seed(seed))[..., :h, :w]
    rgb = ((y[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(rgb[..., ::-1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_translate_float32_and_bfloat16_against_the_generators_forward(seed):
    torch.manual_seed(seed)
    generator = ResnetGenerator(channels=8, blocks=2, noise=True, noise_init=2.0).eval()
    image = np.random.default_rng(seed).integers(0, 256, (29 + seed, 45, 3), dtype=np.uint8)
    reference = _translate_reference(generator, image, seed)
    assert np.array_equal(translate_image(generator, image, seed=seed), reference)
    # bfloat16 layers (emulated where the CPU has no AMX: the same numbers, only slower); noise and sums float32
    amp = translate_image(generator, image, seed=seed, amp=True).astype(int)
    diff = np.abs(amp - reference)
    assert diff.mean() < 1.0 and diff.max() <= 8, (diff.mean(), diff.max())


# --------------------------------------------------------------------------------------------- losses


def test_lsgan_loss():
    scores = torch.tensor([0.0, 1.0, 0.5])
    assert lsgan_loss(scores, True).item() == pytest.approx((1 + 0 + 0.25) / 3)
    assert lsgan_loss(scores, False).item() == pytest.approx((0 + 1 + 0.25) / 3)


def test_preservation_loss_sees_erased_products_and_new_blobs():
    image = torch.full((1, 3, 64, 64), -0.5)
    image[..., 8:24, 8:24] = 0.8  # a product
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 8:24, 8:24] = 1
    assert preservation_loss(image, image, mask).item() == 0
    cast = image * 0.9 + 0.05  # a mild colour cast: small
    erased = image.clone()
    erased[..., 8:24, 8:24] = -0.5
    blob = image.clone()
    blob[..., 36:56, 36:56] = 0.5
    losses = [preservation_loss(image, x, mask).item() for x in (cast, erased, blob)]
    assert losses[0] < losses[2] < losses[1]
    assert preservation_loss(image, blob, mask, background_weight=0).item() == pytest.approx(0, abs=1e-6)


# ----------------------------------------------------------------------------------------- training


def test_batches_depend_only_on_seed_and_iteration(tiny_world, tiny_generate):
    source = SourceImages.open(tiny_generate / "synth2019", tiny_generate / "instances_synth2019.json")
    target = sorted((tiny_world / "val2019").iterdir())
    a, b = training_batch(0, 5, source, target, 32, 2), training_batch(0, 5, source, target, 32, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (2, 32, 32, 3) and a[1].shape == (2, 32, 32) and a[2].shape == (2, 32, 32, 3)
    assert not np.array_equal(a[0], training_batch(0, 6, source, target, 32, 2)[0])


def test_training_is_deterministic_by_seed(tiny_world, tiny_generate, tiny_model, tmp_path):
    _train(tiny_world, tiny_generate, tmp_path / "again.pt")
    assert _equal_states(_weights(tiny_model), _weights(tmp_path / "again.pt"))
    _train(tiny_world, tiny_generate, tmp_path / "other.pt", dataclasses.replace(TINY, seed=1))
    assert not _equal_states(_weights(tiny_model), _weights(tmp_path / "other.pt"))


def test_checkpoint_round_trip_weights_only(tiny_model):
    state = torch.load(tiny_model, weights_only=True)
    assert state["iteration"] == 2 and state["config"] == dataclasses.asdict(TINY)
    assert [row["iteration"] for row in state["losses"]] == [1, 2]
    generator = load_generator(tiny_model)
    assert all(torch.equal(v, state["networks"]["g_ab"][k]) for k, v in generator.state_dict().items())


def test_resume_equals_an_uninterrupted_run(tiny_world, tiny_generate, tmp_path):
    three = dataclasses.replace(TINY, iters=3)
    _train(tiny_world, tiny_generate, tmp_path / "straight.pt", three)
    _train(tiny_world, tiny_generate, tmp_path / "resumed.pt", TINY)
    result = _train(tiny_world, tiny_generate, tmp_path / "resumed.pt", three)
    assert result["iteration"] == 3
    straight, resumed = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(tmp_path / "resumed.pt")
    assert _equal_states(straight["networks"], resumed["networks"])
    assert straight["losses"] == resumed["losses"]


def test_prematching_stores_the_target_histograms(tiny_world, tiny_model, tmp_path):
    from rpc_synth.image_files import folder_images, read_image

    _generator, counts = load_translator(tiny_model)
    expected = channel_histograms(read_image(p) for p in folder_images(tiny_world / "val2019"))
    assert TINY.prematch and np.array_equal(counts, expected)
    # A checkpoint from before pre-matching and noise injection loads as it was trained: without either.
    state = torch.load(tiny_model, weights_only=True)
    state.pop("target_histograms")
    for name in ("prematch", "noise"):
        state["config"].pop(name)
    for net in ("g_ab", "g_ba"):
        state["networks"][net].pop("noise_scale")
    torch.save(state, tmp_path / "old.pt")
    old, no_counts = load_translator(tmp_path / "old.pt")
    assert no_counts is None and old.noise_scale is None
    # One from before the fixed noise level had learned it: it loads with a learned (parameter) level.
    state = torch.load(tiny_model, weights_only=True)
    state["config"].pop("noise_learned")
    torch.save(state, tmp_path / "learned.pt")
    learned, _ = load_translator(tmp_path / "learned.pt")
    assert isinstance(learned.noise_scale, torch.nn.Parameter)
    assert not isinstance(load_translator(tiny_model)[0].noise_scale, torch.nn.Parameter)


def test_cyclegan_apply_is_deterministic_and_prematches(tiny_world, tiny_generate, tiny_model, tmp_path):
    ann = tiny_generate / "instances_synth2019.json"
    for run in ("a", "b"):
        render_dataset(tiny_generate / "synth2019", ann, tmp_path / run, model=tiny_model, progress=False)
    names = sorted(p.name for p in (tmp_path / "a" / IMAGES_DIR).iterdir())
    assert names and all((tmp_path / "a" / IMAGES_DIR / n).read_bytes() == (tmp_path / "b" / IMAGES_DIR / n).read_bytes()
                         for n in names)
    # The generator sees the histogram-matched image: the same generator on the raw image gives another result.
    generator, counts = load_translator(tiny_model)
    image = cv2.imread(str(tiny_generate / "synth2019" / names[0]))
    image_id = next(im["id"] for im in read_instances(ann)["images"] if im["file_name"] == names[0])
    matched = translate_image(generator, match_histograms(image, counts), seed=image_id)
    raw = translate_image(generator, image, seed=image_id)
    assert not np.array_equal(matched, raw)


def test_resume_with_other_settings_is_refused(tiny_world, tiny_generate, tiny_model, tmp_path):
    copy = tmp_path / "model.pt"
    copy.write_bytes(tiny_model.read_bytes())
    with pytest.raises(InputError, match="gen_channels"):
        _train(tiny_world, tiny_generate, copy, dataclasses.replace(TINY, gen_channels=8))


def test_not_a_checkpoint_is_a_format_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError, match=r"bad\.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(FormatError, match="not an rpc-synth render checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


# -------------------------------------------------------------------------------------------- apply


@pytest.mark.parametrize("amp", [None, False, True])
def test_apply_records_its_precision(amp, tiny_generate, tiny_model, tmp_path, monkeypatch):
    import rpc_synth.render.apply as apply_module

    monkeypatch.setattr(apply_module, "native_bf16_cpu", lambda: True)  # None follows the CPU: native here
    ann = tiny_generate / "instances_synth2019.json"
    written = render_dataset(tiny_generate / "synth2019", ann, tmp_path, model=tiny_model, amp=amp, progress=False)
    expected = "float32" if amp is False else "bfloat16"
    assert written["render"]["precision"] == expected and written["render"]["device"] == "cpu"
    assert read_instances(tmp_path / INSTANCES)["render"]["precision"] == expected


@pytest.mark.parametrize("amx, avx512_bf16", [(True, False), (False, True), (False, False)])
def test_native_bf16_cpu_is_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16):
    from rpc_synth.render import native_bf16_cpu

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert native_bf16_cpu() == (amx or avx512_bf16)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)  # an older torch: float32
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert not native_bf16_cpu()


def test_device_choice():
    from rpc_synth.render import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu0", "cuda:99"):
        with pytest.raises(InputError, match="--device"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no GPU")
def test_cuda_without_a_gpu_is_refused_before_anything_is_written(tiny_world, tiny_generate, tiny_model, tmp_path):
    ann = tiny_generate / "instances_synth2019.json"
    with pytest.raises(InputError, match="no such CUDA device"):
        render_dataset(tiny_generate / "synth2019", ann, tmp_path / "out", model=tiny_model, device="cuda",
                       progress=False)
    with pytest.raises(InputError, match="no such CUDA device"):
        train_translator(tiny_generate / "synth2019", ann, tiny_world / "val2019", tmp_path / "m.pt", TINY,
                         device="cuda", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.pt").exists()


@pytest.mark.gpu
def test_gpu_training_follows_the_cpu_run_and_writes_a_cpu_checkpoint(tiny_world, tiny_generate, tiny_model,
                                                                     tmp_path):
    # Same crops and noise (drawn on the CPU); the GPU's arithmetic (TF32 convolutions) differs in rounding.
    train_translator(tiny_generate / "synth2019", tiny_generate / "instances_synth2019.json", tiny_world / "val2019",
                     tmp_path / "gpu.pt", TINY, device="cuda", progress=False)
    cpu, gpu = load_checkpoint(tiny_model), torch.load(tmp_path / "gpu.pt", weights_only=True)
    for row_cpu, row_gpu in zip(cpu["losses"], gpu["losses"], strict=True):
        for key in row_cpu:
            assert row_gpu[key] == pytest.approx(row_cpu[key], rel=0.05, abs=1e-3), key
    for net in cpu["networks"]:
        for key, value in cpu["networks"][net].items():
            assert gpu["networks"][net][key].device.type == "cpu"
            torch.testing.assert_close(gpu["networks"][net][key], value, rtol=0.05, atol=0.01)
    # and it resumes on the CPU
    more = dataclasses.replace(TINY, iters=3)
    assert _train(tiny_world, tiny_generate, tmp_path / "gpu.pt", more)["iteration"] == 3


@pytest.mark.gpu
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gpu_translation_matches_the_cpu(seed):
    torch.manual_seed(seed)
    generator = ResnetGenerator(channels=8, blocks=2, noise=True, noise_init=2.0).eval()
    image = np.random.default_rng(seed).integers(0, 256, (29 + seed, 45, 3), dtype=np.uint8)
    reference = _translate_reference(generator, image, seed).astype(int)
    generator = generator.cuda()
    for amp, mean, most in ((False, 0.1, 2), (True, 1.0, 8)):
        diff = np.abs(translate_image(generator, image, seed=seed, amp=amp).astype(int) - reference)
        assert diff.mean() < mean and diff.max() <= most, (amp, diff.mean(), diff.max())


@pytest.mark.parametrize("method", ["cyclegan", "camera", "histogram"])
def test_apply_passes_annotations_through(method, tiny_world, tiny_generate, tiny_model, tmp_path, helpers):
    ann = tiny_generate / "instances_synth2019.json"
    render_dataset(tiny_generate / "synth2019", ann, tmp_path, method=method, model=tiny_model,
                   target=tiny_world / "val2019", progress=False)
    original, written = helpers.load(ann), read_instances(tmp_path / INSTANCES)
    assert written.pop("render")["method"] == method
    assert written == original
    helpers.check_visible_boxes(written, tmp_path / IMAGES_DIR)


def test_apply_checks_inputs_before_writing(tiny_generate, tmp_path):
    ann = tiny_generate / "instances_synth2019.json"
    with pytest.raises(InputError, match="--model"):
        render_dataset(tiny_generate / "synth2019", ann, tmp_path / "a", method="cyclegan", progress=False)
    for method in ("histogram", "camera"):
        with pytest.raises(InputError, match="--target"):
            render_dataset(tiny_generate / "synth2019", ann, tmp_path / "b", method=method, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------- histogram


def test_histogram_matching_to_own_statistics_is_identity():
    image = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(match_histograms(image, channel_histograms([image])), image)


def test_histogram_matching_moves_values_to_the_target_distribution():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 100, (64, 64, 3), dtype=np.uint8)
    target = np.clip(rng.normal([60, 128, 200], 10, (64, 64, 3)), 0, 255).astype(np.uint8)
    matched = match_histograms(image, channel_histograms([target]))
    assert np.allclose(matched.reshape(-1, 3).mean(0), target.reshape(-1, 3).mean(0), atol=2)
    assert np.allclose(matched.reshape(-1, 3).std(0), target.reshape(-1, 3).std(0), atol=2)
    order = np.argsort(image[..., 0].ravel(), kind="stable")  # monotone: the order of values is kept
    assert np.all(np.diff(matched[..., 0].ravel()[order].astype(int)) >= 0)


def test_histogram_rejects_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        channel_histograms([np.zeros((4, 4, 3), np.float32)])


# ------------------------------------------------------------------------------------------ measures


def test_frechet_distance_against_the_1d_formula():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1, 2, (400, 1)), rng.normal(0, 1, (300, 1))
    ref = np.ones((2, 1)) * [[0], [2]]  # mean 1, std 1: no rescaling beyond the shift
    za, zb = a - 1, b - 1
    expected = (za.mean() - zb.mean()) ** 2 + (za.std(ddof=1) - zb.std(ddof=1)) ** 2
    assert frechet_distance(a, b, ref) == pytest.approx(expected, rel=1e-6)
    c = rng.normal(0, 1, (50, 4))
    assert frechet_distance(c, c) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(c + 1, c) > frechet_distance(c + 0.5, c) > 0


def test_features_see_colour_and_texture():
    flat = np.full((32, 32, 3), 120, np.uint8)
    noisy = np.clip(flat + np.random.default_rng(4).normal(0, 20, flat.shape), 0, 255).astype(np.uint8)
    f_flat, f_noisy = image_features(flat), image_features(noisy)
    assert f_flat.shape == (13,) and f_flat[6] == 1.0  # every pixel in the flattest gradient bin
    assert f_noisy[3] > f_flat[3] and f_noisy[6] < 0.5


def _tray_with_products():
    image = np.full((96, 96, 3), (90, 130, 160), np.uint8)
    cv2.rectangle(image, (10, 10), (30, 40), (200, 40, 40), -1)
    cv2.rectangle(image, (50, 20), (70, 35), (30, 200, 30), -1)
    return image, [[10, 10, 21, 31], [50, 20, 21, 16]]


def test_product_changes():
    image, boxes = _tray_with_products()
    same = product_changes(image, image, boxes, min_blob_area=20)
    assert same["kept"] == 2 and same["new_blobs"] == 0 and same["ious"] == [1.0, 1.0]
    cast = np.clip(image.astype(int) * [0.8, 0.9, 1.1], 0, 255).astype(np.uint8)
    assert product_changes(image, cast, boxes, min_blob_area=20)["kept"] == 2
    changed = image.copy()
    changed[20:36, 50:71] = (90, 130, 160)  # second product erased
    cv2.circle(changed, (40, 75), 10, (30, 30, 220), -1)  # a blob on the tray
    result = product_changes(image, changed, boxes, min_blob_area=20)
    assert result["kept"] == 1 and result["new_blobs"] == 1 and result["new_regions"] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_tray_texture_is_a_region_not_a_blob(seed):
    """A soft-edged patch of tray texture (what pooled histogram matching makes of a cloudy tray) is a new
    foreground region but not a product-like blob; a crisp patch of the same colour and size is both."""
    rng = np.random.default_rng(seed)
    image, boxes = _tray_with_products()
    image = np.pad(image, ((0, 64), (0, 64), (0, 0)), mode="edge")
    cx, cy, radius = int(rng.integers(25, 70)), int(rng.integers(115, 130)), int(rng.integers(10, 14))
    colour = np.array([(30, 30, 220), (220, 40, 200), (20, 200, 220)][seed])
    patch = np.zeros(image.shape[:2], np.float32)
    cv2.circle(patch, (cx, cy), radius, 1.0, -1)
    for name, weight in (("crisp", patch), ("soft", cv2.GaussianBlur(patch, (0, 0), 6) * 2)):
        weight = np.clip(weight, 0, 1)[..., None]
        after = np.clip(image * (1 - weight) + colour * weight, 0, 255).astype(np.uint8)
        result = product_changes(image, after, boxes, min_blob_area=40)
        assert result["kept"] == 2 and result["new_regions"] == 1, (name, result)
        assert result["new_blobs"] == (1 if name == "crisp" else 0), (name, result)


def test_measure_render_same_with_workers_and_equal_to_per_image_sums(tiny_world, tiny_generate, tmp_path, helpers):
    """Two worker processes give the same report as one; the report's sums are those of ``product_changes``
    called image by image, and its gaps the Fréchet distance of ``image_features`` stacked by hand."""
    ann = tiny_generate / "instances_synth2019.json"
    render_dataset(tiny_generate / "synth2019", ann, tmp_path / "hist", method="histogram",
                   target=tiny_world / "val2019", progress=False)
    one = measure_render(tiny_generate / "synth2019", ann, tiny_world / "test2019", tmp_path / "hist" / IMAGES_DIR)
    two = measure_render(tiny_generate / "synth2019", ann, tiny_world / "test2019", tmp_path / "hist" / IMAGES_DIR,
                         workers=2)
    assert one == two
    data = helpers.load(ann)
    areas = [a["area"] for a in data["annotations"]]
    kept = blobs = 0
    before, after = [], []
    for im in data["images"]:
        a = cv2.imread(str(tiny_generate / "synth2019" / im["file_name"]))
        b = cv2.imread(str(tmp_path / "hist" / IMAGES_DIR / im["file_name"]))
        boxes = [x["bbox"] for x in data["annotations"] if x["image_id"] == im["id"]]
        changes = product_changes(a, b, boxes, 0.25 * float(np.median(areas)))
        kept, blobs = kept + changes["kept"], blobs + changes["new_blobs"]
        before.append(image_features(a))
        after.append(image_features(b))
    target = np.stack([image_features(cv2.imread(str(p))) for p in sorted((tiny_world / "test2019").iterdir())])
    assert one["products"] == len(data["annotations"]) and one["products_kept"] == kept and one["new_blobs"] == blobs
    assert one["domain_gap_before"] == pytest.approx(frechet_distance(np.stack(before), target))
    assert one["domain_gap_after"] == pytest.approx(frechet_distance(np.stack(after), target))
    assert domain_gap(tiny_generate / "synth2019", tiny_world / "test2019", workers=2) == \
        pytest.approx(one["domain_gap_before"])
    alone = measure_render(tiny_generate / "synth2019", ann, tiny_world / "test2019", workers=2)
    assert alone == {k: one[k] for k in ("images", "target_images", "domain_gap_before")}
