"""Vision transformer backbone of FastReID (TransReID-style), ``build_vit_backbone``.

Overlapping 16 x 16 patches (MODEL.BACKBONE.STRIDE_SIZE), a class token, position embeddings
sized for INPUT.SIZE_TRAIN and an optional side-information embedding (SIE) per camera.
The forward returns the normalised class token as a ``B x C x 1 x 1`` map, so the usual
EmbeddingHead pooling applies unchanged.

Parameter names follow FastReID (``cls_token, pos_embed, sie_embed, patch_embed.proj,
blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm``), so FastReID checkpoints
and timm / Google ImageNet ViT weights (``.pth`` or ``.npz``) load by name.

Cameras: FastReID never enables SIE (its builder passes no camera count); here
MODEL.BACKBONE.SIE_CAMERAS > 0 turns it on, and the forward then needs the 0-based ``camids``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ReidError
from reid.modeling.backbones.build import BACKBONE_REGISTRY
from reid.modeling.backbones.pretrained import backbone_state, load_into, load_state_file

logger = logging.getLogger(__name__)

PATCH_SIZE = 16
LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class ViTArch:
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    # FastReID's "small" is the early timm ViT-S: 768 wide, scaled by the full width (not the
    # head width); its ImageNet weights were trained that way, so the scale must match them
    qk_scale: float | None
    embed_dim: int = 768


ARCHS = {
    "small": ViTArch(depth=8, num_heads=8, mlp_ratio=3.0, qkv_bias=False, qk_scale=768 ** -0.5),
    "base": ViTArch(depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, qk_scale=None),
}


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples, rescaling the kept ones."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x * mask / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, qk_scale: float | None,
                 attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # the fused kernel applies dropout to the attention weights, as the explicit softmax did
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, dim)))


class Block(nn.Module):
    def __init__(self, dim: int, arch: ViTArch, drop: float, attn_drop: float,
                 drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, arch.num_heads, arch.qkv_bias, arch.qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * arch.mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """16 x 16 patches taken every ``stride`` pixels (overlapping when stride < 16)."""

    def __init__(self, img_size: tuple[int, int], stride: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.grid = patch_grid(img_size, stride)
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH_SIZE, stride=stride)
        # FastReID's init for this conv: He-normal over the output fan
        fan_out = PATCH_SIZE * PATCH_SIZE * dim
        nn.init.normal_(self.proj.weight, 0.0, math.sqrt(2.0 / fan_out))

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B x N x C tokens, the (rows, cols) grid they came from)."""
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


def patch_grid(img_size: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    rows, cols = ((size - PATCH_SIZE) // step + 1 for size, step in zip(img_size, stride))
    if rows < 1 or cols < 1:
        raise ReidError(f"INPUT.SIZE_TRAIN {list(img_size)} is smaller than the ViT's "
                        f"{PATCH_SIZE} x {PATCH_SIZE} patch; use at least {PATCH_SIZE} pixels")
    return rows, cols


class VisionTransformer(nn.Module):
    """ViT whose forward returns the normalised class token as a ``B x C x 1 x 1`` map."""

    def __init__(self, arch: ViTArch, img_size: tuple[int, int], stride: tuple[int, int],
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, num_cameras: int = 0,
                 sie_coe: float = 1.0) -> None:
        super().__init__()
        dim = arch.embed_dim
        self.out_channels = dim
        self.patch_embed = PatchEmbed(img_size, stride, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        self.num_cameras = num_cameras
        self.sie_coe = sie_coe
        if num_cameras > 0:
            self.sie_embed = nn.Parameter(torch.zeros(num_cameras, 1, dim))
        self.pos_drop = nn.Dropout(drop_rate)
        # stochastic depth grows linearly with depth: 0 for the first block, the rate for the last
        rates = [drop_path_rate * i / max(arch.depth - 1, 1) for i in range(arch.depth)]
        self.blocks = nn.ModuleList(
            Block(dim, arch, drop_rate, attn_drop_rate, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        for param in (self.cls_token, self.pos_embed, getattr(self, "sie_embed", None)):
            if param is not None:
                nn.init.trunc_normal_(param, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def takes_camids(self) -> bool:
        """Whether the forward needs ``camids`` (the meta-architecture passes them when True)."""
        return self.num_cameras > 0

    def forward(self, x: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        tokens, grid = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat((cls, tokens), dim=1) + self._pos_embed_for(grid)
        if self.num_cameras > 0:
            x = x + self.sie_coe * self.sie_embed[self._checked_camids(camids, x.device)]
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 0].reshape(x.shape[0], -1, 1, 1)

    def _pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        # an input of another size than INPUT.SIZE_TRAIN (e.g. SIZE_TEST) gets the grid resampled
        if grid == self.patch_embed.grid:
            return self.pos_embed
        return resize_pos_embed(self.pos_embed, grid, self.patch_embed.grid)

    def _checked_camids(self, camids: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        if camids is None:
            raise ReidError(f"this ViT has camera embeddings (MODEL.BACKBONE.SIE_CAMERAS "
                            f"{self.num_cameras}); its forward needs the batch's camids")
        camids = torch.as_tensor(camids, device=device).long()
        if camids.numel() and (camids.min() < 0 or camids.max() >= self.num_cameras):
            raise ReidError(f"camids must lie in 0..{self.num_cameras - 1} "
                            f"(MODEL.BACKBONE.SIE_CAMERAS {self.num_cameras}); "
                            f"got {camids.min().item()}..{camids.max().item()}")
        return camids


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int],
                     old_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Resample the grid part of a ``1 x (1 + N) x C`` position embedding to ``grid``.

    The class token's entry is kept; the N grid entries (row-major, ``old_grid`` or inferred
    from N) are interpolated bilinearly, as FastReID does for ImageNet weights.
    """
    cls_entry, grid_entries = pos_embed[:, :1], pos_embed[:, 1:]
    old_grid = old_grid or infer_grid(grid_entries.shape[1], grid)
    dim = grid_entries.shape[-1]
    image = grid_entries.reshape(1, *old_grid, dim).permute(0, 3, 1, 2)
    image = F.interpolate(image.float(), size=grid, mode="bilinear", align_corners=False)
    resized = image.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
    return torch.cat((cls_entry, resized), dim=1)


def infer_grid(num_patches: int, target: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) layout of ``num_patches`` saved position embeddings.

    A square count is taken as a square grid (ImageNet weights); otherwise the factorisation
    whose aspect ratio is closest to the target grid's (a re-id checkpoint of another size).
    """
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    pairs = [(rows, num_patches // rows) for rows in range(1, num_patches + 1)
             if num_patches % rows == 0]
    aspect = math.log(target[0] / target[1])
    return min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - aspect))


# ---------------------------------------------------------------- ImageNet / checkpoint weights

def load_vit_weights(model: VisionTransformer, path: str) -> None:
    """Load ViT weights from ``path``: a ``.pth`` (timm / FastReID names) or a Google ``.npz``."""
    if not Path(path).is_file():
        raise ReidError(f"MODEL.BACKBONE.PRETRAIN_PATH {path} does not exist "
                        "(expected ViT weights, .pth or .npz, or set it to '')")
    state = npz_state(path) if str(path).endswith(".npz") else load_state_file(path)
    load_into(model, adapt_state(model, backbone_state(state)), path)


def adapt_state(model: VisionTransformer, state: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    """Fit ImageNet ViT weights to this model: drop classifier / distillation entries, reshape a
    linear patch projection to the conv, resample the position grid to this input size."""
    out = {}
    for key, value in state.items():
        if key.startswith(("head", "pre_logits", "dist")):
            continue
        if key == "patch_embed.proj.weight" and value.ndim < 4:
            value = value.reshape(model.patch_embed.proj.weight.shape)
        elif key == "pos_embed" and value.shape != model.pos_embed.shape:
            if "dist_token" in state:  # DeiT-distilled: drop the distillation token's entry
                value = torch.cat((value[:, :1], value[:, 2:]), dim=1)
            logger.info("resizing position embedding %s to %s", tuple(value.shape),
                        tuple(model.pos_embed.shape))
            value = resize_pos_embed(value, model.patch_embed.grid)
        out[key] = value
    return out


def npz_state(path: str) -> dict[str, torch.Tensor]:
    """Google's ViT ``.npz`` (JAX/Flax names, HWIO / ``dim x heads x head_dim`` kernels)
    converted to this module's names and PyTorch layouts."""
    try:
        arrays = dict(np.load(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise ReidError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    t = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays.items()}
    if "embedding/kernel" not in t:
        raise ReidError(f"{path} is not a Google ViT .npz (no 'embedding/kernel' entry)")
    state = {
        "patch_embed.proj.weight": t["embedding/kernel"].permute(3, 2, 0, 1),
        "patch_embed.proj.bias": t["embedding/bias"],
        "cls_token": t["cls"],
        "pos_embed": t["Transformer/posembed_input/pos_embedding"],
        "norm.weight": t["Transformer/encoder_norm/scale"],
        "norm.bias": t["Transformer/encoder_norm/bias"],
    }
    index = 0
    while f"Transformer/encoderblock_{index}/LayerNorm_0/scale" in t:
        state.update(npz_block(t, f"Transformer/encoderblock_{index}/", f"blocks.{index}."))
        index += 1
    return state


def npz_block(t: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    attn, mlp = src + "MultiHeadDotProductAttention_1/", src + "MlpBlock_3/"
    # q/k/v kernels are dim x heads x head_dim; nn.Linear wants out x in, stacked q, k, v
    qkv = [t[f"{attn}{name}/kernel"].flatten(1).T for name in ("query", "key", "value")]
    out = {
        dst + "norm1.weight": t[src + "LayerNorm_0/scale"],
        dst + "norm1.bias": t[src + "LayerNorm_0/bias"],
        dst + "attn.qkv.weight": torch.cat(qkv),
        dst + "attn.proj.weight": t[attn + "out/kernel"].flatten(0, 1).T,
        dst + "attn.proj.bias": t[attn + "out/bias"],
        dst + "norm2.weight": t[src + "LayerNorm_2/scale"],
        dst + "norm2.bias": t[src + "LayerNorm_2/bias"],
        dst + "mlp.fc1.weight": t[mlp + "Dense_0/kernel"].T,
        dst + "mlp.fc1.bias": t[mlp + "Dense_0/bias"],
        dst + "mlp.fc2.weight": t[mlp + "Dense_1/kernel"].T,
        dst + "mlp.fc2.bias": t[mlp + "Dense_1/bias"],
    }
    if f"{attn}query/bias" in t:
        out[dst + "attn.qkv.bias"] = torch.cat(
            [t[f"{attn}{name}/bias"].flatten() for name in ("query", "key", "value")])
    return out


# ---------------------------------------------------------------- builder

def parse_arch(depth: str) -> ViTArch:
    if depth not in ARCHS:
        raise ReidError(f"MODEL.BACKBONE.DEPTH {depth!r} is not a ViT depth for "
                        f"build_vit_backbone; expected one of {', '.join(ARCHS)}")
    return ARCHS[depth]


def pair(values, key: str) -> tuple[int, int]:
    values = list(values) if isinstance(values, (list, tuple)) else [values, values]
    if len(values) != 2 or any(int(v) < 1 for v in values):
        raise ReidError(f"{key} must be two positive integers [height, width]; got {values}")
    return int(values[0]), int(values[1])


@BACKBONE_REGISTRY.register()
def build_vit_backbone(cfg) -> VisionTransformer:
    bb = cfg.MODEL.BACKBONE
    depth = str(bb.DEPTH)
    model = VisionTransformer(
        parse_arch(depth),
        img_size=pair(cfg.INPUT.SIZE_TRAIN, "INPUT.SIZE_TRAIN"),
        stride=pair(bb.STRIDE_SIZE, "MODEL.BACKBONE.STRIDE_SIZE"),
        drop_rate=bb.DROP_RATIO, attn_drop_rate=bb.ATT_DROP_RATE,
        drop_path_rate=bb.DROP_PATH_RATIO,
        # (reid) key proposed to the config; 0 (FastReID's behaviour) until it exists
        num_cameras=int(getattr(bb, "SIE_CAMERAS", 0)), sie_coe=bb.SIE_COE)
    model.description = f"vit {depth}"
    if bb.PRETRAIN:
        if bb.PRETRAIN_PATH:
            load_vit_weights(model, bb.PRETRAIN_PATH)
        else:
            logger.warning("no ImageNet weights for vit %s: set MODEL.BACKBONE.PRETRAIN_PATH to a "
                           "ViT .pth or .npz file; training from scratch", depth)
    return model
