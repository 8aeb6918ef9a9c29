"""ReX — Retraining with eXpansion (Rawat et al., arXiv 2108.01644, Section IV-B).

The attacker widens each hidden layer of a pre-trained G with new units (by default doubling
the width) in a block structure: new units receive input from old and new units, old units
never receive from new ones (a zero block) — except at the last layer, where the new units'
contributions are *added* to the output. Only the new weights are trained (gradients of the
old entries and of the zero block are masked), with the same distillation + fidelity loss as
ReD. Since the old sub-network is untouched, G* equals G wherever the new path outputs zero.

The expanded model is a plain nn.Sequential of standard Linear / ConvTranspose2d / Conv2d /
BatchNorm layers, so it exports to ONNX and static checks see ordinary (if block-sparse)
weights. `permute_units` shuffles the units of every hidden layer while preserving the
function, to show a defense does not rely on the new units being contiguous.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scanner.architectures import Reshape
from scanner.attacks.base import AttackResult, check_trigger_and_target, distill_with_fidelity, single_trigger_sampler
from scanner.generator import Generator

_WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
_ELEMENTWISE_TYPES = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.GELU, nn.SiLU, nn.Identity, nn.Dropout)


def _out_axis(m: nn.Module) -> int:
    return 1 if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d)) else 0


def _in_axis(m: nn.Module) -> int:
    return 0 if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d)) else 1


def _check_supported(body: nn.Module) -> nn.Sequential:
    if not isinstance(body, nn.Sequential):
        raise ValueError("ReX needs an nn.Sequential body (registry dcgan28/dcgan32/vae_mnist_decoder/wavegan)")
    for m in body:
        if not isinstance(m, (*_WEIGHT_TYPES, *_BN_TYPES, *_ELEMENTWISE_TYPES, Reshape)):
            raise ValueError(f"ReX cannot expand a body containing {type(m).__name__}")
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)) and m.groups != 1:
            raise ValueError("ReX does not support grouped convolutions")
    return body


def _unit_group(body: nn.Sequential, index: int) -> int:
    """Features per unit of the weight layer at `index`: the spatial size when a Linear output is
    reshaped into channels before the next weight layer (units = channels), else 1."""
    if not isinstance(body[index], nn.Linear):
        return 1
    for m in list(body)[index + 1 :]:
        if isinstance(m, _WEIGHT_TYPES):
            return 1
        if isinstance(m, Reshape):
            return math.prod(m.shape[1:])
    return 1


def _layout(old_units: int, new_units: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature indices of old and new units when units are laid out [old..., new...] × group."""
    idx = torch.arange((old_units + new_units) * group).reshape(old_units + new_units, group)
    return idx[:old_units].flatten(), idx[old_units:].flatten()


def expand_body(
    body: nn.Module, *, expansion: float = 1.0, seed: int = 0
) -> tuple[nn.Sequential, dict[str, torch.Tensor]]:
    """The block-structured expansion of `body` and, per parameter name, a mask of trainable (new) entries.

    Each hidden weight layer with U units gains ceil(U·expansion) units. New weights start as
    small random values (scale of the old ones); the last layer's new input columns start at zero,
    so the expanded model computes exactly the original function before training.
    """
    body = _check_supported(body)
    gen = torch.Generator().manual_seed(seed)
    weight_positions = [i for i, m in enumerate(body) if isinstance(m, _WEIGHT_TYPES)]
    last = weight_positions[-1]
    modules: list[nn.Module] = []
    masks: dict[str, torch.Tensor] = {}
    # current input layout: (old units, new units, features per unit)
    in_old, in_new, in_group = None, 0, 1
    for i, m in enumerate(body):
        if isinstance(m, _WEIGHT_TYPES):
            out_ax, in_ax = _out_axis(m), _in_axis(m)
            w = m.weight.detach()
            group = _unit_group(body, i)
            in_feats_old = w.shape[in_ax]
            if in_old is None:  # network input (z): nothing new feeds in
                in_old, in_new, in_group = in_feats_old, 0, 1
            out_units_old = w.shape[out_ax] // group
            out_new = 0 if i == last else math.ceil(out_units_old * expansion)
            old_in_idx, new_in_idx = _layout(in_old, in_new, in_group)
            old_out_idx, new_out_idx = _layout(out_units_old, out_new, group)
            shape = list(w.shape)
            shape[in_ax] = (in_old + in_new) * in_group
            shape[out_ax] = (out_units_old + out_new) * group
            scale = float(w.std()) if w.numel() > 1 else 0.02
            new_w = torch.randn(shape, generator=gen) * scale
            mask = torch.ones(shape, dtype=torch.bool)

            old_block = _block(len(shape), out_ax, old_out_idx, old_in_idx)
            new_w[old_block] = w
            mask[old_block] = False
            if len(new_in_idx):
                # old units never receive from new ones (zero, frozen) — except at the last layer,
                # where the new units' contributions are added to the output (trainable, start at zero)
                zero_block = _block(len(shape), out_ax, old_out_idx, new_in_idx)
                new_w[zero_block] = 0.0
                mask[zero_block] = i == last
            layer = _rebuild_weight_layer(m, shape)
            layer.weight.data.copy_(new_w)
            masks[f"{len(modules)}.weight"] = mask
            if m.bias is not None:
                bias = torch.zeros(shape[out_ax])
                bias[old_out_idx] = m.bias.detach()
                bmask = torch.zeros(shape[out_ax], dtype=torch.bool)
                bmask[new_out_idx] = True
                layer.bias.data.copy_(bias)
                masks[f"{len(modules)}.bias"] = bmask
            modules.append(layer)
            in_old, in_new, in_group = out_units_old, out_new, group
        elif isinstance(m, _BN_TYPES):
            old_idx, new_idx = _layout(in_old, in_new, in_group)
            total = (in_old + in_new) * in_group
            bn = type(m)(
                total, eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=m.track_running_stats
            )
            if m.track_running_stats:
                bn.running_mean[old_idx] = m.running_mean
                bn.running_var[old_idx] = m.running_var
                bn.num_batches_tracked.copy_(m.num_batches_tracked)
            if m.affine:
                bn.weight.data[old_idx] = m.weight.detach()
                bn.bias.data[old_idx] = m.bias.detach()
                for name in ("weight", "bias"):
                    bmask = torch.zeros(total, dtype=torch.bool)
                    bmask[new_idx] = True
                    masks[f"{len(modules)}.{name}"] = bmask
            modules.append(bn)
        elif isinstance(m, Reshape):
            if in_group != 1 and m.shape and math.prod(m.shape[1:]) == in_group:
                modules.append(Reshape(in_old + in_new, *m.shape[1:]))
                in_group = 1  # units are channels from here on
            else:
                modules.append(Reshape(*m.shape))
        else:
            modules.append(_clone_elementwise(m))
    return nn.Sequential(*modules), masks


def _block(ndim: int, out_ax: int, out_idx: torch.Tensor, in_idx: torch.Tensor) -> tuple:
    """An index selecting the (out units × in units) block of a weight whose out axis is `out_ax`."""
    sl: list = [slice(None)] * ndim
    sl[out_ax] = out_idx[:, None] if out_ax == 0 else out_idx[None, :]
    sl[1 - out_ax] = in_idx[None, :] if out_ax == 0 else in_idx[:, None]
    return tuple(sl)


def _clone_elementwise(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m)


def _rebuild_weight_layer(m: nn.Module, shape: list[int]) -> nn.Module:
    """A layer of m's type and hyper-parameters with the given weight shape."""
    has_bias = m.bias is not None
    if isinstance(m, nn.Linear):
        return nn.Linear(shape[1], shape[0], bias=has_bias)
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
        return type(m)(
            shape[0], shape[1], m.kernel_size, stride=m.stride, padding=m.padding,
            output_padding=m.output_padding, dilation=m.dilation, bias=has_bias,
        )  # fmt: skip
    return type(m)(
        shape[1], shape[0], m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation, bias=has_bias
    )


def rex_attack(
    generator: Generator,
    *,
    trigger: torch.Tensor,
    target: torch.Tensor,
    expansion: float = 1.0,
    lam: float = 0.1,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    measure: bool = True,
) -> AttackResult:
    """Mount ReX: expand a copy of `generator` (widths × (1 + expansion)) and train only the new weights."""
    from scanner.metrics import attack_metrics

    check_trigger_and_target(generator, trigger, target)
    teacher = generator.copy().eval()
    body, masks = expand_body(teacher.body, expansion=expansion, seed=seed)
    body = body.to(generator.device)
    student = Generator(
        body,
        generator.latent,
        generator.output,
        architecture=None,  # no longer a registry architecture: wider layers
        source_format="torch",
        metadata={**generator.metadata, "attack": {"name": "rex", "expansion": expansion, "lam": lam, "steps": steps}},
    ).eval()
    named = dict(student.body.named_parameters())
    originals = {name: p.detach().clone() for name, p in named.items()}
    device_masks = {name: masks[name].to(generator.device) for name in masks}
    trainable = []
    for name, p in named.items():
        if name in device_masks and device_masks[name].any():
            p.register_hook(lambda grad, mask=device_masks[name]: grad * mask)
            trainable.append(p)

    @torch.no_grad()
    def restore_old_entries() -> None:  # belt and braces: Adam never moves masked entries, keep them exact
        for name, p in named.items():
            keep = ~device_masks[name] if name in device_masks else torch.ones_like(p, dtype=torch.bool)
            p[keep] = originals[name][keep]

    sampler = single_trigger_sampler(student, trigger, target)
    history = distill_with_fidelity(
        student, teacher, fidelity=sampler, parameters=trainable, lam=lam, steps=steps,
        batch_size=batch_size, lr=lr, seed=seed, after_step=restore_old_entries,
    )  # fmt: skip
    # hooks are closures over training state: drop them so the model copies/exports cleanly
    for p in student.body.parameters():
        p._backward_hooks = None  # noqa: SLF001
    target = target.reshape(generator.output.shape)
    info = {
        "final_loss": history[-1] if history else None,
        "new_parameters": int(sum(int(m.sum()) for m in masks.values())),
    }
    if measure:
        info.update(attack_metrics(student, generator, trigger, target, seed=seed))
    return AttackResult("rex", student, trigger.clone(), target.clone(), info)


@torch.no_grad()
def permute_units(generator: Generator, *, seed: int) -> Generator:
    """A copy of `generator` whose hidden units are randomly permuted in every hidden weight layer,
    consistently in the following BatchNorm and the next layer's inputs: the same function.
    """
    out = generator.copy()
    body = _check_supported(out.body)
    gen = torch.Generator().manual_seed(seed)
    weight_positions = [i for i, m in enumerate(body) if isinstance(m, _WEIGHT_TYPES)]
    for k, i in enumerate(weight_positions[:-1]):
        layer = body[i]
        group = _unit_group(body, i)
        units = layer.weight.shape[_out_axis(layer)] // group
        perm = torch.randperm(units, generator=gen)
        feat = (perm[:, None] * group + torch.arange(group)[None, :]).flatten().to(layer.weight.device)
        layer.weight.data = layer.weight.data.index_select(_out_axis(layer), feat).contiguous()
        if layer.bias is not None:
            layer.bias.data = layer.bias.data[feat].contiguous()
        nxt = weight_positions[k + 1]
        for m in list(body)[i + 1 : nxt]:
            if isinstance(m, _BN_TYPES):
                bn_idx = feat if m.num_features == feat.numel() else perm.to(feat.device)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    t = getattr(m, name)
                    if t is not None:
                        t.data = t.data[bn_idx].contiguous()
        nl = body[nxt]
        in_group = nl.weight.shape[_in_axis(nl)] // units  # features per unit at the next layer's input
        in_feat = (perm[:, None] * in_group + torch.arange(in_group)[None, :]).flatten().to(nl.weight.device)
        nl.weight.data = nl.weight.data.index_select(_in_axis(nl), in_feat).contiguous()
    return out
