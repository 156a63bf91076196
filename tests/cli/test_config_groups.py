"""Every option of every config group composes and builds; bad overrides get Hydra's own errors."""

from dataclasses import asdict

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import REPO, SMALL_SHAPES
from detection.cli.assembly import build_model
from detection.cli.checks import check_train
from detection.engine.settings import SettingsError, TrainerSettings


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("backbone", options("backbone"))
def test_every_backbone_builds_an_ssd_that_runs(compose_train, backbone):
    model = build_model(compose_train(f"backbone={backbone}", "anchors=shapes128")).eval()
    with torch.no_grad():
        detections = model([torch.rand(3, 100, 140)])
    assert set(detections[0]) == {"boxes", "labels", "scores"}


@pytest.mark.parametrize("anchors", options("anchors"))
def test_every_anchor_layout_builds_on_resnet_and_vgg(compose_train, anchors):
    for backbone in ("resnet18", "vgg16"):
        model = build_model(compose_train(f"anchors={anchors}", f"backbone={backbone}"))
        spec = model.anchor_spec
        expected = sum(s * s * a for s, a in zip(spec.feature_map_sizes, spec.anchors_per_location))
        assert model.box_coder.anchors.shape == (expected, 4)


def test_ssd_head_channels_and_anchor_counts_are_derived(compose_train):
    model = build_model(compose_train("backbone=resnet50", "anchors=voc512"))
    assert model.box_coder.anchors.shape == (24564, 4)
    assert [conv.in_channels for conv in model.head.loc][:2] == [512, 1024]
    assert [conv.out_channels // 4 for conv in model.head.loc] == [4, 6, 6, 6, 6, 4, 4]
    assert model.head.cls[0].out_channels == 4 * 5  # 4 anchors x (4 shape classes + background)


def test_maskrcnn_builds_for_the_dataset_classes(compose_train):
    model = build_model(compose_train("model=maskrcnn"))
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 5
    assert model.roi_heads.mask_predictor.conv5_mask.out_channels == 256


@pytest.mark.parametrize("fpn", options("fpn"))
def test_maskrcnn_builds_its_trunk_from_the_fpn_option(compose_train, fpn):
    model = build_model(compose_train("model=maskrcnn", f"fpn={fpn}"))
    assert type(model.backbone.body.layer1[0]).__name__ == ("BasicBlock" if fpn in ("resnet18", "resnet34") else "Bottleneck")
    assert model.backbone.out_channels == 256 and model.transform.min_size == (800,)


@pytest.mark.parametrize("model", options("model"))
def test_every_model_group_instantiates_as_it_is(compose_train, model):
    """`instantiate(cfg.model)` builds the model, with nothing taken out of or added to the group's node."""
    parts = ["backbone=resnet18", "anchors=shapes128"] if model == "ssd" else ["fpn=resnet18"]
    built = instantiate(compose_train(f"model={model}", *parts).model)
    assert isinstance(built, torch.nn.Module) and built.training


def test_model_parts_belong_to_their_model(compose_train):
    """The SSD composes backbone and anchors, Mask R-CNN fpn: another model's part is refused at compose time."""
    cfg = compose_train("model=maskrcnn")
    assert cfg.backbone is None and cfg.anchors is None and cfg.fpn.arch == "resnet50"
    for part in ("backbone=vgg16", "anchors=ssd300"):
        with pytest.raises(ConfigCompositionException, match="Could not override"):
            compose_train("model=maskrcnn", part)
    with pytest.raises(SettingsError, match="backbone is set but model=maskrcnn does not use it; its parts: \\['fpn'\\]"):
        check_train(compose_train("model=maskrcnn", "+backbone=vgg16"))
    with pytest.raises(ConfigCompositionException, match="Could not override 'fpn'"):
        compose_train("fpn=resnet50")


@pytest.mark.parametrize("augment", options("augment"))
def test_every_dataset_and_augment_option_yields_the_target_contract(compose_train, augment):
    cfg = compose_train(f"augment={augment}", *SMALL_SHAPES)
    for split in ("train", "val"):
        image, target = instantiate(cfg.dataset[split])[0]
        assert image.dtype == torch.uint8
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        if "warp" in target:  # augment=ssd_gpu: the file's bytes, decoded and augmented on the device
            assert image.dim() == 1 and "masks" not in target
            continue
        assert image.shape[0] == 3  # bytes to the model, float on its device
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape[1:] == image.shape[1:]


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_optimizer_and_scheduler_builds(compose_train, optimizer, scheduler):
    cfg = compose_train(f"optimizer={optimizer}", f"scheduler={scheduler}")
    params = [torch.nn.Parameter(torch.zeros(2))]
    built = instantiate(cfg.optimizer)(params)
    schedule = instantiate(cfg.scheduler)(built, total_steps=10000)
    lrs = []
    for _ in range(10000):
        lrs.append(built.param_groups[0]["lr"])
        built.step()
        schedule.step()
    assert lrs[0] < lrs[cfg.scheduler.warmup_steps] == pytest.approx(cfg.optimizer.lr, rel=1e-2)
    assert lrs[-1] < cfg.optimizer.lr / 5


@pytest.mark.parametrize("tracking", options("tracking"))
def test_every_tracking_option_builds(compose_train, tracking):
    tracker = instantiate(compose_train(f"tracking={tracking}").tracking)
    assert hasattr(tracker, "log_metrics")


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_and_debug_preset_composes_and_builds(compose_train, experiment):
    for debug in options("debug"):
        cfg = compose_train(f"experiment={experiment}", f"debug={debug}")
        # without the ImageNet files the paper's recipes name (no download here): their loading is tested in
        # tests/models/test_backbones.py
        assert isinstance(build_model(cfg, pretrained=False), torch.nn.Module)
        assert cfg.trainer.max_epochs >= 1


# the SSD paper's starred runs (section 3 and weiliu89/caffe's scripts): anchors, iterations, lr steps
@pytest.mark.parametrize("experiment, dataset, anchors, steps, lr_steps", [
    ("ssd300_voc0712", "voc", 8732, 120_000, [80_000, 100_000]),
    ("ssd512_voc0712", "voc", 24564, 120_000, [80_000, 100_000]),
    ("ssd300_coco", "coco", 8732, 400_000, [280_000, 360_000]),
    ("ssd512_coco", "coco", 24564, 400_000, [280_000, 360_000]),
])
def test_the_ssd_papers_recipes_train_as_the_paper_says(compose_train, experiment, dataset, anchors, steps, lr_steps):
    cfg = compose_train(f"experiment={experiment}")
    assert cfg.dataset.name == dataset and cfg.backbone.weights == "IMAGENET1K_V1"
    assert (cfg.trainer.batch_size, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == \
        (32, 1e-3, 0.9, 5e-4)
    assert cfg.trainer.max_steps == steps and [round(m * steps) for m in cfg.scheduler.milestones] == lr_steps
    assert cfg.scheduler.gamma == 0.1 and cfg.scheduler.warmup_steps == 0
    geometry = cfg.augment.transforms[-1].geometry  # the zoom-out "expansion" of the starred results
    assert geometry.max_zoom == 4.0 and geometry.size == cfg.anchors.image_size
    assert len(build_model(cfg, pretrained=False).box_coder.anchors) == anchors


@pytest.mark.faults
def test_unknown_group_option_gets_hydras_error(compose_train):
    with pytest.raises(MissingConfigException, match="backbone"):
        compose_train("backbone=resnet9000")


@pytest.mark.faults
def test_unknown_key_gets_hydras_error(compose_train):
    with pytest.raises(ConfigCompositionException, match="trainer.epochz"):
        compose_train("trainer.epochz=3")


def test_anchor_mismatch_names_both_lists(compose_train):
    cfg = compose_train("anchors=shapes128", "anchors.feature_map_sizes=[16,8,4,2,2]")
    with pytest.raises(InstantiationException, match=r"\[16, 8, 4, 2, 2\].*\[16, 8, 4, 2, 1\]"):
        build_model(cfg)


def test_a_layout_without_map_sizes_drops_the_maps_the_input_is_too_small_for(compose_train, caplog):
    caplog.set_level("INFO")
    cfg = compose_train("anchors=shapes128", "anchors.image_size=64", "anchors.feature_map_sizes=null",
                        "anchors.steps=null")
    spec = build_model(cfg).anchor_spec
    assert spec.feature_map_sizes == (8, 4, 2, 1) and spec.box_sizes == (12, 26, 48, 72, 100)
    assert "produces 4 feature maps at input 64, not 5: the 1 coarsest dropped" in caplog.text


def test_defaults_are_written_once_in_the_schema(compose_train):
    """The entry points' YAML files hold only their defaults lists; the `trainer` group is TrainerSettings."""
    for name in ("evaluate", "predict", "export", "anchor_tools", "inspect_data"):
        assert set(yaml.safe_load((REPO / "conf" / f"{name}.yaml").read_text())) == {"defaults"}, name
    assert not (REPO / "conf" / "trainer").exists()
    assert OmegaConf.to_container(compose_train().trainer) == asdict(TrainerSettings())


@pytest.mark.parametrize("search", options("hparams_search"))
def test_every_search_space_composes_with_a_study_name_that_resolves(search):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={search}", "tracking=none", "backbone=resnet18",
                                          "anchors=shapes128"], return_hydra_config=True)
    assert OmegaConf.select(cfg, "hydra.sweeper.study_name") == f"{search}_ssd128_resnet18_shapes"


@pytest.mark.parametrize("size, layout", [(160, "anchors=ssd300"), (192, "anchors=ssd300"), (256, "anchors=ssd300"),
                                          (320, "anchors=ssd300"), (160, "anchors=voc512"), (256, "anchors=voc512"),
                                          (192, "model=fasterrcnn fpn=resnet18"), (320, "model=fasterrcnn fpn=resnet18")])
def test_image_size_moves_the_model_to_that_input_and_it_trains_a_step(compose_train, caplog, size, layout):
    from detection.cli.input_size import apply_image_size

    caplog.set_level("INFO")
    cfg = apply_image_size(compose_train("backbone=resnet18", *layout.split(), f"image_size={size}")
                           if "anchors" in layout else compose_train(*layout.split(), f"image_size={size}"))
    check_train(cfg)
    model = build_model(cfg, pretrained=False).train()
    if "anchors" in layout:
        spec, original = model.anchor_spec, compose_train(layout)["anchors"]
        assert spec.image_size == size and spec.steps[0] == 8.0  # the trunk's stride-8 map is the first
        assert spec.box_sizes[0] == pytest.approx(original.box_sizes[0] * size / original.image_size, abs=0.01)
        dropped = original.feature_map_sizes and len(original.aspect_ratios) - spec.num_maps
        assert ("coarsest dropped" in caplog.text) == bool(dropped)
    else:
        assert (model.transform.min_size[-1], model.transform.max_size) == (size, round(1333 * size / 800))
    images = [torch.rand(3, 120, 150), torch.rand(3, 90, 200)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 80.0, 90.0]]), "labels": torch.tensor([1])} for _ in images]
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert torch.isfinite(sum(losses.values()))


def test_image_size_below_128_is_refused_naming_the_sizes_that_work(compose_train):
    with pytest.raises(SettingsError, match=r"image_size=100: must be whole numbers >= 128"):
        check_train(compose_train("image_size=100"))


def test_an_explicit_anchor_size_the_layout_does_not_fit_says_to_use_image_size(compose_train):
    with pytest.raises(InstantiationException, match=r"network produces 5 at input 160: \[20, 10, 5, 3, 1\]; to change the "
                                         r"input size, set image_size=160 instead of anchors.image_size"):
        build_model(compose_train("backbone=resnet18", "anchors=ssd300", "anchors.image_size=160"))
