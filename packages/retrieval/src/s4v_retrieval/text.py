"""CLIP text tower glue: open_clip's text encoder returning every token feature, and its tokenizer.

Side4Video's retrieval (``Retrieval/modules/modeling.py``, ``get_sequence_output``) encodes
captions with the CLIP text transformer (causal mask) at ``max_words = 32`` tokens (start + at most
30 word pieces + end, zero padded) and, for the weighted token-wise interaction, keeps *all* token
features ``ln_final(x) @ text_projection`` with a validity mask, besides CLIP's sentence embedding
(the end-of-text token).

The tower is taken over from an open_clip ``CLIP`` (no weights are copied or re-implemented). It is
frozen by default; ``trainable=True`` lets it train, at its own learning rate as the reference does
(the reference trains it at lr x 1e-3).
"""

from __future__ import annotations

import open_clip
import torch
from open_clip.transformer import text_global_pool
from torch import nn

from s4v_retrieval.similarity import TextFeatures

PAD_TOKEN = 0  # open_clip's CLIP tokenizer pads with 0


class CLIPTextTower(nn.Module):
    """The text half of an open_clip ``CLIP``, truncated to ``context_length`` positions.

    Args:
        clip: an open_clip ``CLIP`` whose text modules are taken over (shared, not copied).
        context_length: tokens per caption (``max_words``); at most the model's context length.
        trainable: train the tower; when False its parameters are frozen and it runs without
            building an autograd graph.
    """

    def __init__(
        self,
        clip: open_clip.CLIP | open_clip.CustomTextCLIP,
        *,
        context_length: int,
        trainable: bool,
    ) -> None:
        super().__init__()
        if isinstance(clip, open_clip.CLIP):
            text, pool_type, eos_id = clip, clip.text_pool_type, getattr(clip, "text_eos_id", None)
        elif (
            isinstance(clip, open_clip.CustomTextCLIP)  # EVA-CLIP: the text tower is a submodule
            and isinstance(clip.text, open_clip.transformer.TextTransformer)
            and clip.text.cls_emb is None
        ):
            text, pool_type, eos_id = clip.text, clip.text.pool_type, clip.text.eos_id
        else:
            raise TypeError(
                "CLIPTextTower needs an open_clip CLIP, or a CustomTextCLIP with a plain "
                f"TextTransformer, got {type(clip).__name__}"
            )
        if not 3 <= context_length <= text.context_length:
            raise ValueError(
                f"context_length must lie in [3, {text.context_length}] for this model, "
                f"got {context_length}"
            )
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.pool_type: str = pool_type
        self.eos_id: int | None = eos_id
        self.context_length = context_length
        causal = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", causal, persistent=False)
        self.trainable = trainable
        self.requires_grad_(trainable)

    @property
    def width(self) -> int:
        """Embedding width E of the output features."""
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection.out_features
        return self.text_projection.shape[1]

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def forward(self, tokens: torch.Tensor) -> TextFeatures:
        """Token ids ``(B, L)`` (``L = context_length``) -> every token's feature and the pooled one.

        Returns:
            :class:`TextFeatures` with ``tokens (B, L, E)``, ``mask (B, L)`` (non-padding) and
            ``pooled (B, E)`` (CLIP's sentence embedding).
        """
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(
                f"expected token ids of shape (B, {self.context_length}), got {tuple(tokens.shape)}"
            )
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            x = self.token_embedding(tokens) + self.positional_embedding[: self.context_length]
            x = self.transformer(x, attn_mask=self.attn_mask)  # (B, L, W), batch-first
            x = self.ln_final(x)
            pooled = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
            return TextFeatures(
                tokens=self._project(x),  # (B, L, E)
                mask=tokens != PAD_TOKEN,
                pooled=self._project(pooled),  # (B, E)
            )


def build_tokenizer(model_name: str, context_length: int):
    """open_clip's tokenizer for ``model_name``: ``tokenizer(list[str]) -> (B, context_length)``.

    Longer captions are truncated with the end-of-text token kept last, as the reference does.
    """
    return open_clip.get_tokenizer(model_name, context_length=context_length)
