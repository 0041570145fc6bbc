"""What every frozen image tower offers the side networks: tokens after each block, no autograd.

Side4Video (arXiv 2311.15769) runs a frozen image encoder beside a trainable side network
that reads the tokens after every encoder layer. :class:`FrozenTower` is that narrow interface; the
CLIP ViT (:class:`s4v_core.backbone_vit.FrozenViT`) and the EVA-02 tower
(:class:`s4v_core.backbone_eva.FrozenEVA`) implement it, so every side network and method runs on
either.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


class FrozenTower(nn.Module):
    """What every frozen image tower offers on top of its ``embed`` and ``block``.

    A subclass sets ``num_layers``, ``ln_post`` and ``proj`` and implements ``embed(images)`` and
    ``block(index, tokens)``, both without autograd; the side networks and methods need only this
    interface, so a CLIP ViT (``FrozenViT``) and an EVA-02 (``FrozenEVA``) are interchangeable.
    """

    num_layers: int
    ln_post: nn.Module | None
    proj: torch.Tensor | nn.Module | None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def iter_blocks(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """Yield the tokens ``(M, 1+N, D)`` after each block for images ``(M, 3, H, W)``."""
        # No grad context spans a yield: that would leak no_grad into the consumer's code.
        tokens = self.embed(images)
        for index in range(self.num_layers):
            tokens = self.block(index, tokens)
            yield tokens

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Tokens after every block: a list of L tensors ``(M, 1+N, D)`` for images ``(M, 3, H, W)``."""
        return list(self.iter_blocks(images))

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding ``(M, E)``: ``ln_post`` on the last class token, then ``proj``."""
        if self.proj is None:
            raise RuntimeError("build the backbone with with_projection=True to encode images")
        tokens = self.embed(images)
        for index in range(self.num_layers):
            tokens = self.block(index, tokens)
        return self.ln_post(tokens[:, 0]) @ self.proj
