"""A user's code bundle for the code-bundle tests (``tests/unit/test_code_bundles.py``,
``tests/e2e/test_code_bundles_e2e.py``): a network with BatchNorm layers under its own names,
a builder that raises, and archives (``.zip``, ``.tar.gz``) made in memory, links included.
"""

from __future__ import annotations

import io
import tarfile
import textwrap
import zipfile

# A user's network: its own layer names, BatchNorm2d inside a Sequential and on its own.
NETWORK = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, channels, num_classes):
            super().__init__()
            self.stem = nn.Conv2d(channels, 8, 3, padding=1, bias=False)
            self.stem_norm = nn.BatchNorm2d(8)
            self.encoder = nn.Sequential(
                nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
            )
            self.classifier = nn.Linear(16, num_classes)

        def forward(self, x):
            if x.dim() == 3:
                x = x.unsqueeze(1)
            x = torch.relu(self.stem_norm(self.stem(x)))
            return self.classifier(self.encoder(x).mean(dim=(2, 3)))


    def build_model(input_shape, num_classes):
        channels = input_shape[0] if len(input_shape) == 3 else 1
        return TinyNet(channels, num_classes)
    """
)
BROKEN = textwrap.dedent(
    """
    def build_model(input_shape, num_classes):
        return helper(input_shape)


    def helper(shape):
        raise RuntimeError(f"my builder cannot handle {shape}")
    """
)


def zip_bytes(files: dict[str, str | bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_bytes(files: dict[str, str], symlink: tuple[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type, info.linkname = tarfile.SYMTYPE, symlink[1]
            archive.addfile(info)
    return buffer.getvalue()
