"""The built-in networks (``mlp``, ``cnn1d``, ``resnet``, ``unet``), each with BatchNorm, built
by name (``build_model``) or from a model file's recipe (``model_from_recipe``), and their
normalization for a job (``apply_norm``: syncbn, per-worker BN, GroupNorm). Which network
``auto`` picks, and whether a network fits the data, is ``contract.model_choice``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contract.datasets import Task
from contract.model_choice import check_compatible, infer_kind
from contract.spec import JobSpec


class MLP(nn.Module):
    """Flat features -> [Linear, BatchNorm1d, ReLU] x 2 -> Linear."""

    def __init__(self, in_features: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, width, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
            nn.Linear(width, width, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvBNAct(nn.Sequential):
    """Conv, BatchNorm, ReLU in 1-D or 2-D."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int = 1, act: bool = True) -> None:
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        layers: list[nn.Module] = [
            conv(cin, cout, 3, stride=stride, padding=1, bias=False),
            norm(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3-wide convolutions with BN and an (optionally strided) shortcut."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.body = nn.Sequential(
            ConvBNAct(dims, cin, cout, stride), ConvBNAct(dims, cout, cout, act=False)
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False), norm(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem + one block at full resolution + one strided block, global pooling, linear head.

    ``dims=2`` for images (BatchNorm2d), ``dims=1`` for sequences (BatchNorm1d).
    """

    def __init__(self, dims: int, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.dims = dims
        pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool1d(1)
        self.features = nn.Sequential(
            ConvBNAct(dims, in_channels, width),
            BasicBlock(dims, width, width),
            BasicBlock(dims, width, 2 * width, stride=2),
            pool,
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, H, W) images and (N, L) sequences get a channel axis.
        if x.dim() == self.dims + 1:
            x = x.unsqueeze(1)
        return self.head(self.features(x))


class UNet(nn.Module):
    """A small U-Net: (N, C, H, W) or (N, H, W) images -> (N, num_classes, H, W) logits.

    Two levels: ConvBNAct at full resolution (``width`` channels) and at half (2 ``width``),
    two ConvBNAct at a quarter (4 ``width``), then per level bilinear upsampling to the skip's
    exact size, concatenation with the skip and one ConvBNAct; a 1x1 convolution gives the
    logits. Pooling rounds up (``ceil_mode``), so any H and W work, not only multiples of 4.
    6 BatchNorm2d layers (few, since each costs two all_reduces per step when synchronized).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1 = ConvBNAct(2, in_channels, w)
        self.enc2 = ConvBNAct(2, w, 2 * w)
        self.bottom = nn.Sequential(ConvBNAct(2, 2 * w, 4 * w), ConvBNAct(2, 4 * w, 4 * w))
        self.dec2 = ConvBNAct(2, 4 * w + 2 * w, 2 * w)
        self.dec1 = ConvBNAct(2, 2 * w + w, w)
        self.head = nn.Conv2d(w, num_classes, 1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    @staticmethod
    def _up(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([up, skip], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (N, H, W) images get a channel axis
            x = x.unsqueeze(1)
        s1 = self.enc1(x)
        s2 = self.enc2(self.pool(s1))
        bottom = self.bottom(self.pool(s2))
        return self.head(self.dec1(self._up(self.dec2(self._up(bottom, s2)), s1)))


def build_model(
    kind: str, input_shape: tuple[int, ...], num_classes: int, task: Task = "classification"
) -> nn.Module:
    """A fresh model of ``kind`` ("auto" resolves by ``task`` and ``input_shape``) with torch
    BatchNorm."""
    if kind == "auto":
        kind = infer_kind(input_shape, task)
    check_compatible(kind, input_shape)
    if kind == "unet":
        return UNet(input_shape[0] if len(input_shape) == 3 else 1, num_classes)
    if kind == "mlp":
        features = 1
        for size in input_shape:
            features *= size
        return MLP(features, num_classes)
    if kind == "resnet":
        channels = input_shape[0] if len(input_shape) == 3 else 1
        return SmallResNet(2, channels, num_classes)
    channels = input_shape[0] if len(input_shape) == 2 else 1
    return SmallResNet(1, channels, num_classes)


def model_from_recipe(recipe: dict) -> nn.Module:
    """A fresh built-in model of a model file's recipe (``workers.export``), with the layers
    its weights fit (``saved_layers``): load the file's weights into it to get the trained
    model."""
    if not recipe.get("builtin", True):
        raise ValueError(
            f"this model was built by {recipe.get('model')!r} from code bundle "
            f"{recipe.get('code')}: build it with that function and load the weights into it"
        )
    model = build_model(
        recipe["model"], tuple(recipe["input_shape"]), int(recipe["num_classes"]), recipe["task"]
    )
    return saved_layers(model, JobSpec.model_validate(recipe["spec"]))


def saved_layers(model: nn.Module, spec: JobSpec) -> nn.Module:
    """A freshly built ``model`` with the normalization layers a trained model file of
    ``spec`` holds: GroupNorm for ``norm="group"``, else torch BatchNorm (syncbn saves plain
    BatchNorm state)."""
    if spec.norm != "group":
        return model
    return apply_norm(model, "group", group_norm_groups=spec.group_norm_groups)


def apply_norm(
    model: nn.Module,
    norm: str,
    sync_group_size: int | None = None,
    world_size: int = 1,
    group_norm_groups: int | None = None,
) -> nn.Module:
    """The job's normalization on a model built with torch BatchNorm.

    ``norm="sync"``: BatchNorm layers become ``syncbn.SyncBatchNorm``; with
    ``sync_group_size`` smaller than the world, statistics are synchronized within consecutive
    groups of that many ranks (every rank must call this: groups are created collectively).
    ``norm="group"``: they become GroupNorm (``group_norm_groups`` groups each, or the largest
    divisor of the channels up to 32). ``norm="local"`` returns the model unchanged.
    """
    if norm == "local":
        return model
    import syncbn

    if norm == "group":
        return syncbn.convert_group_norm(model, group_norm_groups)
    group = None
    if sync_group_size is not None and sync_group_size < world_size:
        group = syncbn.new_sync_groups(sync_group_size)
    return syncbn.convert_sync_batchnorm(model, process_group=group)


def model_for(
    spec: JobSpec, input_shape: tuple[int, ...], num_classes: int, task: Task = "classification"
) -> nn.Module:
    """The job's model with torch BatchNorm: the code bundle's builder, or a built-in one
    (``task`` resolves ``auto``)."""
    if spec.builder is not None:
        from workers.usercode import build_user_model

        return build_user_model(spec.model, input_shape, num_classes)
    return build_model(spec.model, input_shape, num_classes, task)
