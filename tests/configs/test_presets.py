"""Override layers build what they promise: modality presets, ablations, the UNet baseline, ADM presets."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from bundle import dihedral
from bundle.errors import find_input_error
from bundle_cli import EVALUATE, INFERENCE, ROOT, TRAIN

CONFIGS = ROOT / "configs"


def parse(*layers, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([TRAIN, *[str(CONFIGS / layer) for layer in layers]])
    parser.update(overrides)
    return parser


@pytest.mark.parametrize("preset,modality", [("he", "he"), ("cxr", "cxr"), ("ct", "ct")])
def test_modality_presets_set_modality_and_intensity(preset, modality):
    parser = parse(f"modality/{preset}.json")
    assert parser["modality"] == modality
    transforms = parser.get_parsed_content("intensity")
    names = [type(t).__name__ for t in transforms]
    expected = {"he": ["ScaleIntensityRanged"], "cxr": ["InvertMonochrome1d", "ScaleIntensityRangePercentilesd"],
                "ct": ["CTWindowd"]}[preset]
    assert names == expected
    if preset == "ct":
        assert transforms[0].window == (-1000, 400)
    symmetries = {"he": "reflections", "cxr": "mirror", "ct": "mirror"}[preset]  # no upside-down anatomy
    one_of = parser.get_parsed_content("train#random_transforms")[0]
    augment = [t for t in one_of.transforms if type(t).__name__ == "RandDihedralTextd"]
    assert len(augment) == 1 and augment[0].symmetries == dihedral.SYMMETRY_SETS[symmetries]


@pytest.mark.parametrize("preset,expected", [(None, "reflections"), ("he", "reflections"), ("cxr", "mirror"), ("ct", "mirror")])
def test_evaluation_and_inference_average_over_the_training_symmetries(preset, expected):
    """Test-time augmentation uses the set the network was trained with and the preset's convention.

    On by default for H&E (tiles have no orientation); off in the chest X-ray and CT presets, where the
    mirrored pass measured worse (docs/benchmarks.md section 13), and there it can be turned on."""
    layers = [str(CONFIGS / "modality" / f"{preset}.json")] if preset else []
    convention = "radiological" if preset in ("cxr", "ct") else "image"
    default_on = preset in (None, "he")
    for files in ([TRAIN, *layers, EVALUATE], [INFERENCE, *layers]):
        parser = ConfigParser()
        parser.read_config(files)
        key = "validate#inferer" if files[-1] == EVALUATE else "inferer"
        inferer = parser.get_parsed_content(key)
        averaged = ("identity", *(s for s in dihedral.SYMMETRY_SETS[expected] if s != "identity"))
        assert inferer.symmetries == (averaged if default_on else ("identity",))
        assert inferer.convention == convention
        parser["tta"] = "false" if default_on else "true"
        assert parser.get_parsed_content(key, lazy=False).symmetries == (("identity",) if default_on else averaged)
    assert parse(*layers).get_parsed_content("validate#inferer").symmetries == ("identity",)  # training validates fast
    assert parse("baseline/unet.json").get_parsed_content("validate#inferer").reads_text is False


def test_command_line_false_means_false(tiny_network_options):
    """`--backbone_trainable false` reaches the config as the string "false"; it must still freeze."""
    options = {**tiny_network_options, "backbone_attention": ["true", "false", "False", "false", "TRUE"]}
    net = parse(backbone_trainable="false", fusion_norm="False", **options).get_parsed_content("network_def")
    assert not net.extractor.trainable
    assert not any(p.requires_grad for n, p in net.extractor.backbone.named_parameters() if "attn2" not in n and "norm2" not in n)
    assert sorted(net.extractor.backbone.attentions) == ["0", "4"]  # after the bottleneck and after decoder block 3
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in net.fusion.modules())  # fusion_norm "False"
    default = parse(**tiny_network_options).get_parsed_content("network_def")
    assert all(isinstance(f.reduce[-1], torch.nn.GroupNorm) for f in default.fusion.fusions)  # the default: normalised
    assert parse(amp="false").get_parsed_content("train#trainer").amp is False
    with pytest.raises(Exception) as info:
        parse(cprfl="perhaps", **tiny_network_options).get_parsed_content("network_def")
    assert "option cprfl must be true or false" in find_input_error(info.value)


def test_location_prompt_option_reaches_train_and_inference_networks(tiny_network_options):
    """Off by default (H&E sentences name no lung); on in the chest X-ray preset (docs/benchmarks.md section 21)."""
    assert parse(**tiny_network_options).get_parsed_content("network_def").location_prompt is None
    assert parse("modality/cxr.json", **tiny_network_options).get_parsed_content("network_def").location_prompt is not None
    for files in ([TRAIN, str(CONFIGS / "modality" / "cxr.json")], [INFERENCE, str(CONFIGS / "modality" / "cxr.json")]):
        parser = ConfigParser()
        parser.read_config(files)
        parser.update({**tiny_network_options, "location_prompt": "true"})
        net = parser.get_parsed_content("network_def")
        assert net.location_prompt is not None and net.location_prompt.convention == "radiological"


def test_ct_preset_rescales_8_bit_windowed_pictures(tmp_path):
    """An 8-bit lung-windowed PNG (MedSeg / MosMedData+) is not squeezed by the Hounsfield window."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1))).save(tmp_path / "slice.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mask.png")
    item = parse("modality/ct.json", image_size=[8, 8]).get_parsed_content("validate#preprocessing")(
        {"image": str(tmp_path / "slice.png"), "label": str(tmp_path / "mask.png"), "text": "Lesion in the lungs."}
    )
    assert float(item["image"].min()) == -1.0 and float(item["image"].max()) > 0.7


def test_ct_preset_windows_hounsfield_units(tmp_path):
    import nibabel as nib
    import numpy as np

    hu = np.repeat(np.array([-1200, -1000, -300, 400, 1000], dtype=np.int16)[:, None], 8, axis=1)  # (5, 8)
    hu = np.tile(hu, (2, 1))[:8]  # (8, 8)
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(tmp_path / "slice.nii.gz"))
    nib.save(nib.Nifti1Image((hu > 0).astype(np.uint8), np.eye(4)), str(tmp_path / "mask.nii.gz"))
    parser = parse("modality/ct.json", image_size=[8, 8])
    item = parser.get_parsed_content("validate#preprocessing")(
        {"image": str(tmp_path / "slice.nii.gz"), "label": str(tmp_path / "mask.nii.gz"), "text": "Lesion in the lungs."}
    )
    values = {int(h): float(v) for h, v in zip(hu[:5, 0], item["image"][0, :5, 0])}
    assert values == pytest.approx({-1200: -1.0, -1000: -1.0, -300: 0.0, 400: 1.0, 1000: 1.0}, abs=1e-5)
    assert item["image"].shape == (3, 8, 8)  # greyscale repeated for the RGB encoders


def test_baseline_and_ablation_layers_build(tiny_network_options):
    unet = parse("baseline/unet.json", unet_features=[8, 8, 16, 16, 16, 8]).get_parsed_content("network_def")
    assert type(unet).__name__ == "BasicUNet"
    for layer, check in (("ablation/cprfl_off.json", lambda n: n.alignment is None),
                         ("ablation/ltfr_off.json", lambda n: n.fusion_kind == "cross_attention"),
                         ("ablation/textdiff_head.json", lambda n: n.fusion is None and not n.cprfl)):
        net = parse(layer, **tiny_network_options).get_parsed_content("network_def")
        assert check(net), layer
    # the encoder-scales probe (benchmark variant lcpdn_encoder_scales) needs a convolutional image encoder
    options = {**tiny_network_options, "image_encoder_kind": "efficientnet_lite0", "image_encoder_path": None}
    net = parse("ablation/encoder_scales.json", **options).get_parsed_content("network_def")
    assert net.encoder_scales == [0, 1, 2, 3] and len(net.fusion.fusions) == len(options["blocks"]) + 4


@pytest.mark.parametrize("preset,blocks", [("monuseg", [6, 8, 12, 16]), ("qata_mosmed", [4, 6, 8, 12])])
def test_adm_presets_build_a_frozen_adm_with_the_published_blocks(preset, blocks, tiny_network_options):
    options = {k: v for k, v in tiny_network_options.items() if not k.startswith(("backbone_", "blocks", "prompt_dim"))}
    parser = parse("adm/adm.json", f"adm/{preset}.json", backbone_ckpt=None, **options)
    parser["backbone"].update({"model_channels": 32, "num_head_channels": 16})  # same topology, small width
    net = parser.get_parsed_content("network_def")
    assert type(net.extractor.backbone).__name__ == "ADMUNet" and net.extractor.blocks == blocks
    # the published setting: a frozen generative backbone read at three noise levels (the default trains
    # its backbone and reads the clean image, t = 0: docs/benchmarks.md)
    assert list(net.extractor.timesteps) == [50, 150, 250] and parse()["timesteps"] == [0]
    adm = net.extractor.backbone
    cross = sum(p.numel() for m in adm.cross_attention_modules() for p in m.parameters() if p.requires_grad)
    assert 0 < net.parameter_report()["backbone"] == cross  # frozen ADM; only the added cross-attention trains
    out = net(torch.rand(1, 3, 64, 64) * 2 - 1, ["the nuclei are evenly distributed."])
    assert out.shape == (1, 2, 64, 64)


def test_adm_preset_without_the_checkpoint_is_a_clear_error(tmp_path):
    parser = parse("adm/adm.json", "adm/monuseg.json", ckpt_dir=str(tmp_path))
    parser["backbone"].update({"model_channels": 32, "num_head_channels": 16})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("network_def")
    assert "256x256_diffusion_uncond.pt' does not exist (option backbone_ckpt)" in find_input_error(info.value)


def test_run_ids_name_their_own_workflow_when_layered():
    """`training` stays training when evaluate.json (or pretrain_diffusion.json) is layered on train.json;
    `run`, the id a plain `monai.bundle run` uses, points at the top layer's workflow."""
    for layer, run_id in (("evaluate.json", "evaluating"), ("pretrain_diffusion.json", "pretraining")):
        parser = parse(layer)
        assert parser["run"] == f"@{run_id}"
        assert parser["training"][0] == "$@train#trainer.run()"
        assert parser[run_id] != parser["training"]
    assert parse()["run"] == "@training"


def test_pretrained_encoder_layers_build_the_lcpdn_backbone_and_the_same_encoder_baseline(tiny_network_options):
    """Issue 13: configs/backbone/efficientnet_lite0.json (LCPDN) and baseline/flexible_unet.json (image only)."""
    from monai.networks.nets import FlexibleUNet

    from bundle.networks import PretrainedEncoderBackbone

    options = {k: v for k, v in tiny_network_options.items() if k != "blocks"}
    parser = parse("backbone/efficientnet_lite0.json", **options)
    parser["backbone"]["pretrained"] = False  # the packaged weights are tested in tests/networks
    net = parser.get_parsed_content("network_def")
    assert isinstance(net.extractor.backbone, PretrainedEncoderBackbone) and net.extractor.blocks == [1, 2, 3, 4]
    assert net.eval()(torch.zeros(1, 3, 32, 32), "one lesion.").shape == (1, 2, 32, 32)
    # stage 1 denoising-pretrains the same module (the whole network predicts the noise)
    parser = ConfigParser()
    parser.read_config([TRAIN, str(CONFIGS / "pretrain_diffusion.json"), str(CONFIGS / "backbone" / "efficientnet_lite0.json")])
    parser.update({**options, "device": "cpu", "backbone#pretrained": False})
    assert isinstance(parser.get_parsed_content("pretrain#unet"), PretrainedEncoderBackbone)
    baseline = parse("baseline/flexible_unet.json", **{"network_def#pretrained": False}).get_parsed_content("network_def")
    assert isinstance(baseline, FlexibleUNet) and baseline.backbone == "efficientnet-lite0"


def test_default_backbone_is_basic_unet_and_the_previous_one_is_a_layer(tiny_network_options):
    """0.4.0: the default backbone is BasicUNet's blocks (stage 1 pretrains the same module); the MONAI
    DiffusionModelUNet default of 0.3.x is the layer configs/backbone/diffusion_model_unet.json."""
    from bundle.networks import BasicUNetBackbone, MonaiDiffusionBackbone

    options = {k: v for k, v in tiny_network_options.items() if k != "blocks"}
    net = parse(**options).get_parsed_content("network_def")
    backbone = net.extractor.backbone
    assert isinstance(backbone, BasicUNetBackbone) and net.extractor.blocks == [0, 1, 2, 3]
    assert backbone.decoder_block_channels() == [16, 16, 8, 8]  # unet_features of the tiny network
    assert net.eval()(torch.zeros(1, 3, 32, 32), "one lesion.").shape == (1, 2, 32, 32)
    cprfl_off = parse("ablation/cprfl_off.json", **options).get_parsed_content("network_def")
    assert cprfl_off.extractor.backbone.cross_attention_dim is None
    parser = ConfigParser()
    parser.read_config([TRAIN, str(CONFIGS / "pretrain_diffusion.json")])
    parser.update({**options, "device": "cpu"})
    assert isinstance(parser.get_parsed_content("pretrain#unet"), BasicUNetBackbone)
    layer = parse("backbone/diffusion_model_unet.json")  # the 0.3.x default, so that its checkpoints load
    assert layer["blocks"] == [2, 4, 6, 8] and layer["backbone_channels"] == [16, 32, 64, 128, 128]
    assert layer["backbone_attention_levels"] == [False] * 4 + [True] and layer["backbone_res_blocks"] == 1
    assert (layer["backbone_head_channels"], layer["backbone_norm_groups"]) == (32, 16)
    previous = {**options, "backbone_channels": [8, 16], "backbone_attention_levels": [False, True], "blocks": [0, 2]}
    net = parse("backbone/diffusion_model_unet.json", **previous).get_parsed_content("network_def")
    assert isinstance(net.extractor.backbone, MonaiDiffusionBackbone)
    assert net.extractor.backbone.decoder_block_channels() == [16, 16, 8, 8]
    inference = ConfigParser()
    inference.read_config(INFERENCE)
    assert inference["backbone"] == parse()["backbone"] and inference["blocks"] == [0, 1, 2, 3]


def test_resized_mask_stays_on_its_image(tmp_path):
    """The mask is resized with pixel-centre sampling, like the image: an image that IS its mask (one pixel
    per 1000 px nucleus outline) resizes to the mask. torch's legacy "nearest" samples ~half an output pixel
    off: on MoNuSeg's masks it agreed with the centred mask at Dice 0.80-0.90 (docs/benchmarks.md section 12)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    mask = np.zeros((1000, 1000), np.uint8)
    for y, x in rng.integers(20, 980, size=(300, 2)):
        yy, xx = np.ogrid[-y:1000 - y, -x:1000 - x]
        mask[yy**2 + xx**2 <= 12**2] = 255  # nuclei of radius 12 px, ~3 px at 256
    Image.fromarray(np.stack([mask] * 3, -1)).save(tmp_path / "tile.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    item = parse().get_parsed_content("validate#preprocessing")(
        {"image": str(tmp_path / "tile.png"), "label": str(tmp_path / "mask.png"), "text": "The nuclei."}
    )
    label, image = item["label"][0].numpy() > 0, item["image"][0].numpy() > 0  # image in [-1, 1]: > 0 is the mask
    centred = np.asarray(Image.fromarray(mask).resize((256, 256), Image.NEAREST)).T > 127  # (X, Y) like MONAI
    assert (label == centred).mean() > 0.999
    assert 2 * (label & image).sum() / (label.sum() + image.sum()) > 0.95
