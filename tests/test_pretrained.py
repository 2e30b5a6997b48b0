"""Published checkpoints of the reference implementations load and give the references' own outputs.

Fixtures (`tests/fixtures/pretrained/*.npz`, written by `tests/fixtures/make_pretrained_fixtures.py` with
torch, torchvision, timm, transformers and mmsegmentation) hold each reference's published entry names,
shapes and dtypes, and its eval-mode float32 output on a seeded input. The weights are regenerated here
without torch by the generator's `entry_values` (seeded from each entry's name), written in the
published layout (.safetensors; .pth only where torch is installed), loaded with `pretrained` and run.
Agreement: max|ours - reference| <= 1e-4 max|reference|.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy

from lgmm_jax.training import evaluation
from lgmm_jax import models, pretrained
from lgmm_jax.models.segformer import MixTransformer
from lgmm_jax.pretrained import files
from lgmm_jax.pretrained.loading import abstract_variables

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location(
    "make_pretrained_fixtures", FIXTURES / "make_pretrained_fixtures.py"
)
generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generator)

TOLERANCE = 1e-4


def fixture(case: str):
    data = np.load(FIXTURES / "pretrained" / f"{case}.npz")
    return data, list(data["names"]), json.loads(str(data["shapes"])), list(data["dtypes"])


def published(case: str) -> dict[str, np.ndarray]:
    _, names, shapes, dtypes = fixture(case)
    return generator.published_state(names, shapes, dtypes)


def write(case: str, directory: pathlib.Path) -> str:
    """The case's published state dict as `<directory>/<case>.safetensors` (written once per directory)."""
    path = directory / f"{case}.safetensors"
    if not path.exists():
        safetensors.numpy.save_file(published(case), str(path))
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One folder for the module, so that each case's file is written once; removed after (about 1.5 GB)."""
    path = tmp_path_factory.mktemp("pretrained")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def case_images(case: str) -> np.ndarray:
    data = fixture(case)[0]
    return generator.case_input(case, tuple(data["input_shape"])).transpose(0, 2, 3, 1)  # NCHW -> NHWC


def relative_difference(ours, reference) -> float:
    return float(np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max())


def logits(model, variables, images):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)


def logit_maps(model, variables, images):
    return np.asarray(logits(model, variables, images)).transpose(0, 3, 1, 2)  # NHWC -> NCHW


def mit_stages(model, variables, images):
    """The encoder's four maps, NCHW, flattened and concatenated (as the NVlabs fixture stores them)."""
    stages = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    return np.concatenate([np.asarray(s).transpose(0, 3, 1, 2).ravel() for s in stages])


def mit_b0(path):
    """A bare MiT-B0 encoder (`models.segformer.MixTransformer`) with the file's conventions."""
    options = pretrained.model_options(path)["decoder_kwargs"]
    return MixTransformer((32, 64, 160, 256), (2, 2, 2, 2), **options)


def segmenter(name: str, num_classes: int):
    return lambda path: models.create_segmenter(name, num_classes, **pretrained.model_options(path))


def structural(name: str) -> bool:
    """BatchNorm's step counter and Swin's index and mask buffers: the named exceptions, never loaded."""
    return name.rsplit(".", 1)[-1] in pretrained.STRUCTURAL_LEAVES


CASES = {  # case: (the model, given the written file's path; its output as the fixture stores it)
    "torchvision_resnet50": (lambda p: models.create_classifier("resnet50", 1000), logits),
    "torchvision_resnet101": (lambda p: models.create_classifier("resnet101", 1000), logits),
    "timm_swin_t": (lambda p: models.create_classifier("swin_t", 1000), logits),
    "microsoft_swin_s": (lambda p: models.create_classifier("swin_s", 1000), logits),
    "mmpretrain_swin_t": (lambda p: models.create_classifier("swin_t", 1000), logits),
    "hf_segformer_b0": (segmenter("segformer_b0", 19), logit_maps),
    "hf_segformer_b5_ade": (segmenter("segformer_b5", 150), logit_maps),
    "mmseg_segformer_b0": (segmenter("segformer_b0", 19), logit_maps),
    "mmseg_deeplabv3plus_r50": (lambda p: models.create_segmenter("deeplabv3plus_r50", 19), logit_maps),
    "nvlabs_mit_b0": (mit_b0, mit_stages),
}


# The full-width ResNet-101, Swin-S and SegFormer-B5 take the slow tier (~45 s together); their smaller
# siblings (ResNet-50, Swin-T, SegFormer-B0) check the same mappings in the quick tier, and the full-size
# coverage below checks every entry of their files.
FULL_WIDTH = {"torchvision_resnet101", "microsoft_swin_s", "hf_segformer_b5_ade"}


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow) if case in FULL_WIDTH else case
                                  for case in CASES])
def test_reference_outputs_are_reproduced(case, folder):
    build, output = CASES[case]
    path = write(case, folder)
    model = build(path)
    images = case_images(case)
    variables, report = pretrained.load_variables(model, path, image_shape=images.shape)
    reference = fixture(case)[0]["output"]
    assert relative_difference(output(model, variables, images), reference) <= TOLERANCE
    assert report["fresh"] == []
    unused = {"head.weight", "head.bias"} if case == "nvlabs_mit_b0" else set()  # ImageNet head: not ours
    assert {n for n in report["ignored"] if not structural(n)} == unused


# ---------------------------------------------------------------- full-size coverage (names and shapes only)

COVERAGE = {  # case: (model, what, the file's entries that may stay unused besides structural buffers)
    "mmpretrain_resnetv1c101_names": (lambda: models.create_segmenter("deeplabv3plus_r101", 150), "backbone",
                                      {"head.fc.weight", "head.fc.bias"}),
    "mmseg_deeplabv3plus_r101_ade_names": (lambda: models.create_segmenter("deeplabv3plus_r101", 150), "all",
                                           set()),
    "timm_swin_b_names": (lambda: models.create_classifier("swin_b", 1000), "all", set()),
    "nvlabs_mit_b5_names": (lambda: models.create_segmenter("segformer_b5", 150), "backbone",
                            {"head.weight", "head.bias"}),
    "hf_segformer_b5_ade": (
        lambda: models.create_segmenter("segformer_b5", 150, decoder_kwargs=dict(layer_norm_epsilon=1e-5)),
        "all", set(),
    ),
}


@pytest.mark.parametrize("case", list(COVERAGE))
def test_full_size_mappings_use_every_entry_and_fill_every_array(case):
    build, what, unused = COVERAGE[case]
    _, names, shapes, dtypes = fixture(case)
    state = {n: np.broadcast_to(np.zeros((), d), s) for n, s, d in zip(names, shapes, dtypes)}  # no memory
    model = build()
    image_shape = (1, 224, 224, 3) if "swin" in case else (1, 64, 64, 3)
    loaded, report = pretrained.plan(model, state, file=case, what=what, image_shape=image_shape)
    assert set(report["ignored"]) == unused | {n for n in names if structural(n)}
    encoder = "/".join(pretrained.role_roots(model)["encoder"])
    if what == "all":
        assert report["fresh"] == []
    else:  # the encoder whole, nothing else
        assert report["fresh"] and not any(n.split("/", 1)[1].startswith(encoder) for n in report["fresh"])
        assert all(n.split("/", 1)[1].startswith(encoder) for n in report["loaded"])
    assert len(loaded) == len(report["loaded"])


# ---------------------------------------------------------------- other spellings of the same files

V4_TO_V5 = (  # transformers >= 5 save_pretrained names (its conversion_mapping.py, "SegformerModel")
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.", r"segformer.stages.\1.patch_embeddings."),
    (r"^segformer\.encoder\.block\.(\d+)\.", r"segformer.stages.\1.blocks."),
    (r"^segformer\.encoder\.layer_norm\.(\d+)\.", r"segformer.stages.\1.layer_norm."),
    (r"attention\.self\.query", "attention.q_proj"), (r"attention\.self\.key", "attention.k_proj"),
    (r"attention\.self\.value", "attention.v_proj"), (r"attention\.output\.dense", "attention.o_proj"),
    (r"attention\.self\.sr", "attention.sequence_reduction.sequence_reduction"),
    (r"attention\.self\.layer_norm", "attention.sequence_reduction.layer_norm"),
    (r"mlp\.dense1", "mlp.fc1"), (r"mlp\.dense2", "mlp.fc2"),
    (r"layer_norm_1", "layernorm_before"), (r"layer_norm_2", "layernorm_after"),
    (r"^decode_head\.linear_c\.", "decode_head.linear_projections."),
)


def same_arrays(model, state, other_state, what="all"):
    """Both state dicts fill exactly the same arrays of `model` with the same values."""
    ours, _ = pretrained.plan(model, state, what=what, image_shape=(1, 64, 96, 3))
    theirs, _ = pretrained.plan(model, other_state, what=what, image_shape=(1, 64, 96, 3))
    return ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_transformers5_names_load_as_the_hub_names():
    """The hub file's outputs are checked above; the same weights under transformers-5 names load alike."""
    hub = published("hf_segformer_b0")
    renamed = {generator.rename(n, V4_TO_V5): v for n, v in hub.items()}
    assert "segformer.stages.0.blocks.0.attention.k_proj.weight" in renamed
    model = models.create_segmenter("segformer_b0", 19, decoder_kwargs=dict(layer_norm_epsilon=1e-5))
    assert same_arrays(model, renamed, hub)


def test_wrappers_and_prefixes_are_removed():
    state = {"conv1.weight": np.zeros((1,)), "bn1.bias": np.ones((1,))}
    for wrapped in ({"state_dict": state, "meta": {"epoch": 3}}, {"model": state, "optimizer": {}},
                    {"module." + n: v for n, v in state.items()}):
        assert list(files.unwrap(wrapped, "x.pth")) == ["conv1.weight", "bn1.bias"]


def test_pth_files_read_through_torch_weights_only(folder):
    """mmcv's {"state_dict", "meta"} wrapper with DataParallel's `module.` prefix, as torch.save wrote it."""
    torch = pytest.importorskip("torch")
    case = "mmseg_segformer_b0"
    state = published(case)
    path = str(folder / "segformer.pth")
    wrapped = {"module." + n: torch.from_numpy(v) for n, v in state.items()}
    torch.save({"state_dict": wrapped, "meta": {"mmseg_version": "1.2.2"}}, path)
    read = pretrained.read_state_dict(path)
    assert list(read) == list(state)
    assert all(np.array_equal(read[n], state[n]) for n in state)
    model = segmenter("segformer_b0", 19)(path)
    assert same_arrays(model, read, state)


def test_urls_are_read_through_etils_epath(folder, monkeypatch):
    local = write("hf_segformer_b0", folder)
    monkeypatch.setattr(files, "_read_bytes", lambda path: pathlib.Path(local).read_bytes())
    state = pretrained.read_state_dict("gs://bucket/segformer.safetensors")
    expected = safetensors.numpy.load_file(local)
    assert state.keys() == expected.keys() and all(np.array_equal(state[n], expected[n]) for n in expected)


# ---------------------------------------------------------------- what="backbone", conventions, errors


def one_line_error(path, *fragments, call):
    with pytest.raises(pretrained.WeightsError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and path in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_another_class_count_is_fresh_for_the_backbone_and_an_error_for_all(folder):
    path = write("hf_segformer_b0", folder)
    model = models.create_segmenter("segformer_b0", 7, **pretrained.model_options(path))
    one_line_error(path, "decode_head.classifier.weight", "(19, 256, 1, 1)", "(1, 1, 256, 7)", call=lambda: (
        pretrained.load_variables(model, path, image_shape=(1, 64, 96, 3))))
    _, report = pretrained.plan(model, pretrained.read_state_dict(path), what="backbone")
    encoder = ("params/decoder/backbone/", "batch_stats/decoder/backbone/")
    assert report["loaded"] and all(n.startswith(encoder) for n in report["loaded"])
    assert {"params/classifier/kernel", "params/decoder/decode_head/linear_c1/kernel"} <= set(report["fresh"])
    assert not any(n.startswith(encoder) for n in report["fresh"])
    assert "decode_head.classifier.weight" in report["ignored"]


def test_backbone_loading_initialises_the_rest(folder):
    path = write("torchvision_resnet50", folder)
    model = models.create_classifier("resnet50", 10)
    variables, report = pretrained.load_variables(model, path, what="backbone", image_shape=(1, 32, 32, 3))
    assert report["fresh"] == ["params/classifier/bias", "params/classifier/kernel"]
    assert {"fc.weight", "fc.bias"} <= set(report["ignored"])
    assert variables["params"]["classifier"]["kernel"].shape == (2048, 10)
    stem = published("torchvision_resnet50")["conv1.weight"].transpose(2, 3, 1, 0)
    assert np.array_equal(variables["params"]["backbone"]["stem_conv"]["kernel"], stem)
    assert np.isfinite(np.asarray(logits(model, variables, np.ones((1, 32, 32, 3), np.float32)))).all()


def test_conventions_of_the_file_are_required(folder):
    hf = write("hf_segformer_b0", folder)
    assert pretrained.model_options(hf)["decoder_kwargs"]["layer_norm_epsilon"] == 1e-5
    default = models.create_segmenter("segformer_b0", 19)
    one_line_error(hf, "layer_norm_epsilon=1e-05", "model_options",
                   call=lambda: pretrained.load_variables(default, hf, image_shape=(1, 64, 96, 3)))
    mmseg = write("mmseg_segformer_b0", folder)
    assert pretrained.model_options(mmseg)["decoder_kwargs"]["decode_projection"] == "conv_bn_relu"
    linear_head = models.create_segmenter("segformer_b0", 19, decoder_kwargs=dict(
        layer_norm_epsilon=1e-6, embedding_layer_norm_epsilon=1e-6))
    one_line_error(mmseg, "decode_projection='conv_bn_relu'",
                   call=lambda: pretrained.load_variables(linear_head, mmseg, image_shape=(1, 64, 96, 3)))
    assert pretrained.model_options(write("torchvision_resnet50", folder)) == {}


def test_mmseg_decode_head_has_a_batchnorm_per_projection():
    """mmseg's ConvModule projections: a bias-free conv and a BatchNorm where a Linear has a bias (4*E more)."""
    def count(**decoder_kwargs):
        model = models.create_segmenter("segformer_b0", 150, decoder_kwargs=decoder_kwargs)
        return sum(x.size for x in jax.tree.leaves(abstract_variables(model, (1, 64, 64, 3))["params"]))

    assert count() == 3_752_694  # Hugging Face transformers' SegFormer-B0 at 150 classes
    assert count(decode_projection="conv_bn_relu") == 3_752_694 + 4 * 256
    with pytest.raises(ValueError, match="decode_projection"):
        models.create_segmenter("segformer_b0", 19, decoder_kwargs={"decode_projection": "mlp"})


def test_other_architectures_are_refused_in_one_line(folder):
    swin_t = write("timm_swin_t", folder)
    one_line_error(swin_t, "stage3_block7",
                   call=lambda: pretrained.load_variables(models.create_classifier("swin_s", 1000), swin_t))
    resnet50 = write("torchvision_resnet50", folder)
    deeplab = models.create_segmenter("deeplabv3plus_r50", 19)
    one_line_error(resnet50, "decoder/backbone/stem_", "another architecture", call=lambda: (
        pretrained.load_variables(deeplab, resnet50, what="backbone", image_shape=(1, 64, 64, 3))))
    one_line_error(resnet50, "stage3_block7", call=lambda: pretrained.load_variables(
        models.create_classifier("resnet101", 1000), resnet50, image_shape=(1, 64, 64, 3)))
    ten_classes = models.create_classifier("resnet50", 10)
    one_line_error(resnet50, "'fc.weight'", "(1000, 2048)", "(2048, 10)", call=lambda: (
        pretrained.load_variables(ten_classes, resnet50, image_shape=(1, 64, 64, 3))))


def test_unreadable_and_unknown_files_are_refused_in_one_line(folder, monkeypatch):
    model = models.create_classifier("resnet18", 10)
    garbage = folder / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    one_line_error(str(garbage), "cannot be read", call=lambda: pretrained.load_variables(model, garbage))
    one_line_error(str(folder / "missing.safetensors"), "no such file",
                   call=lambda: pretrained.load_variables(model, folder / "missing.safetensors"))
    unknown = str(folder / "unknown.safetensors")
    safetensors.numpy.save_file({"encoder.conv.weight": np.zeros((2, 2), np.float32)}, unknown)
    one_line_error(unknown, "unknown layout", call=lambda: pretrained.load_variables(model, unknown))
    one_line_error(str(folder / "x.h5"), "unknown file type",
                   call=lambda: pretrained.read_state_dict(folder / "x.h5"))
    pth = folder / "weights.pth"
    pth.write_bytes(b"\0")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    one_line_error(str(pth), "pip install -e '.[torch]'", call=lambda: pretrained.read_state_dict(pth))


# ---------------------------------------------------------------- this library's runs: the encoder alone


def test_an_encoder_moves_between_models_of_this_library():
    images = np.ones((1, 8, 8, 1), np.float32)
    classifier = models.create_classifier("small_cnn", 10)
    source = jax.jit(lambda key: classifier.init(key, images, train=False))(jax.random.key(3))
    target = models.create_lgmm("small_cnn", 4, latent_dim=8)
    variables, report = pretrained.transfer_encoder(source, target, image_shape=images.shape)
    for collection in ("params", "batch_stats"):
        same = jax.tree.map(np.array_equal, variables[collection]["backbone"], source[collection]["backbone"])
        assert all(jax.tree.leaves(same))
    assert set(report["ignored"]) == {"params/classifier/bias", "params/classifier/kernel"}
    assert report["fresh"] and all(n.split("/")[1] != "backbone" for n in report["fresh"])
    z, _ = logits(target, variables, images)
    assert np.isfinite(np.asarray(z)).all()
    narrower = models.create_classifier("small_cnn", 10, widths=(32, 48, 128))
    one_line_error("source variables", "(3, 3, 64, 128)", "(3, 3, 48, 128)", call=lambda: (
        pretrained.transfer_encoder(source, narrower, image_shape=images.shape)))


def test_a_segmenter_encoder_moves_into_an_lgmm_segmenter(folder):
    path = write("hf_segformer_b0", folder)
    options = pretrained.model_options(path)
    source_model = models.create_segmenter("segformer_b0", 19, **options)
    source, _ = pretrained.load_variables(source_model, path, image_shape=(1, 64, 96, 3))
    target = models.create_segmenter("segformer_b0", 5, head="lgmm", **options)
    shapes = abstract_variables(target, (1, 64, 96, 3))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)  # stands for restored variables
    variables, report = pretrained.transfer_encoder(source, target, target_variables=zeros)
    assert pretrained.encoder_root(variables) == ("decoder", "backbone")
    assert report["loaded"] and all(n.split("/")[1:3] == ["decoder", "backbone"] for n in report["loaded"])
    assert re.search("decode_head", " ".join(report["ignored"]))
    assert "params/classifier/kernel" in report["ignored"]
    kv = lambda tree: tree["params"]["decoder"]["backbone"]["stage1_block1"]["attn"]["kv"]["kernel"]
    assert np.array_equal(kv(variables), kv(source))


@pytest.mark.slow  # exports and evaluates a full-width SegFormer-B0 with every softmax pixel score: ~40 s
def test_a_published_segmenter_exports_and_evaluates_without_training(tmp_path):
    """`export --config --weights`: a Hugging Face SegFormer-B0 file for the testbed's 8 classes becomes an
    export whose variables are the file's arrays (loaded directly, with its conventions) and which
    `evaluate --model` scores with mIoU and every softmax pixel score; a model the file cannot fill
    (an L-GMM head) is refused in one line with nothing written."""
    from configs import scenes
    from lgmm_jax import export
    from lgmm_jax.deploy import inference

    _, names, shapes, dtypes = fixture("hf_segformer_b0")
    shapes = [[8, *shape[1:]] if name.startswith("decode_head.classifier.") else shape
              for name, shape in zip(names, shapes)]
    path = str(tmp_path / "segformer_b0_scenes.safetensors")
    safetensors.numpy.save_file(generator.published_state(names, shapes, dtypes), path)
    config = scenes.get_config()
    config.model.head = "softmax"
    config.model.decoder = {}  # SegFormer-B0 at full width, as published
    config.segmentation.eval_images = config.segmentation.fit_images = 6  # a quick look at every set

    description = export.export_published(config, path, str(tmp_path / "exported"))
    assert description["checkpoint"] == {"weights": path}
    assert description["config"]["model"]["decoder"]["layer_norm_epsilon"] == 1e-5  # the file's convention
    expected, _ = pretrained.load_variables(segmenter("segformer_b0", 8)(path), path, image_shape=(1, 64, 64, 3))
    exported = inference.load(str(tmp_path / "exported")).variables
    assert jax.tree.all(jax.tree.map(np.array_equal, exported, expected))

    results = evaluation.evaluate_export(str(tmp_path / "exported"), str(tmp_path / "evaluated"),
                                       config_overrides={"eval.figures": False})
    assert 0.0 <= results["closed_set"]["miou"] <= 1.0
    for unknown_set in ("near", "far"):
        assert {"msp", "maxlogit", "entropy", "sml", "mahalanobis"} <= set(results["open_set"][unknown_set])

    config.model.head = "lgmm"
    one_line_error(path, "unfilled", call=lambda: export.export_published(config, path, str(tmp_path / "lgmm")))
    assert not (tmp_path / "lgmm").exists()
