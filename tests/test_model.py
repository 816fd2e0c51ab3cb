import pytest
import torch
from torchvision import models

from vgg16.config import ARCHS
from vgg16.errors import UsageError
from vgg16.model import build_model, check_state_dict, count_parameters, head_for


@pytest.mark.parametrize("arch", ARCHS)
def test_imagenet_head_has_torchvisions_keys_and_shapes(arch):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        ours = build_model(arch, 17, head="imagenet").state_dict()
        theirs = getattr(models, arch)(num_classes=17).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_outputs_match_torchvision_on_the_same_weights_both_ways():
    torch.manual_seed(0)
    reference = models.vgg11_bn(num_classes=5).eval()
    ours = build_model("vgg11_bn", 5, head="imagenet").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), reference(x))
    back = models.vgg11_bn(num_classes=5).eval()
    back.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(back(x), reference(x))


def test_small_head_is_about_15m_parameters_for_vgg16():
    assert head_for(32) == "small" and head_for(63) == "small" and head_for(64) == "imagenet"
    small = build_model("vgg16", 10, head="small")
    assert 14.5e6 < count_parameters(small) < 15.5e6
    with torch.device("meta"):
        big = build_model("vgg16", 10, head="imagenet")
    assert count_parameters(big) > 130e6
    # Keys keep torchvision's classifier layout, so replacing the last layer works the same way.
    assert small.state_dict()["classifier.6.weight"].shape == (10, 512)


def test_every_parameter_gets_a_gradient_with_an_odd_class_count():
    model = build_model("vgg11_bn", 7, head="small", dropout=0.0)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_shape_check_names_the_first_mismatch():
    model = build_model("vgg11", 10, head="small")
    other = build_model("vgg11", 3, head="small").state_dict()
    with pytest.raises(UsageError, match="classifier.6.weight"):
        check_state_dict(model, other, "weights")
    check_state_dict(build_model("vgg11", 3, head="small"), other, "weights")  # same shapes: fits
    with pytest.raises(UsageError, match="missing"):
        check_state_dict(model, {k: v for k, v in other.items() if "features.0" not in k}, "weights")


def test_a_model_compiled_in_place_normalises_uint8_itself_and_its_ema_copy_runs_its_own_weights():
    import copy

    from vgg16.compiling import compile_with_input
    from vgg16.engine import Normalizer

    torch.manual_seed(0)
    model = build_model("vgg11", 3, head="small", dropout=0.0).eval()
    reference = copy.deepcopy(model)
    normalize = Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cpu")
    batch_input = compile_with_input(model, normalize, backend="eager")
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(normalize(images)))
        assert batch_input(images) is images  # the batches now pass through: the model normalises
        assert list(model.state_dict()) == list(reference.state_dict())  # no _orig_mod. prefix
        twin = copy.deepcopy(model)  # as the EMA copies it
        for p in twin.parameters():
            p.mul_(0.5)
        assert not torch.allclose(twin(images), model(images))  # the copy runs its halved weights, not the original's compiled call


def test_the_normaliser_gives_the_model_its_layout_whatever_the_batch_layout():
    from vgg16.data.pipeline import stack_images
    from vgg16.engine import Normalizer

    images = [torch.randint(0, 256, (3, 9, 7), dtype=torch.uint8) for _ in range(3)]
    batch = stack_images([image.permute(1, 2, 0).contiguous().permute(2, 0, 1) for image in images])
    assert batch.is_contiguous(memory_format=torch.channels_last) and torch.equal(batch, torch.stack(images))
    for channels_last, layout in ((False, torch.contiguous_format), (True, torch.channels_last)):
        normalize = Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cpu", channels_last=channels_last)
        out = normalize(batch)
        assert out.is_contiguous(memory_format=layout) and out.dtype == torch.float32
        assert torch.equal(out, normalize(torch.stack(images)))  # the values do not depend on the batch's layout
