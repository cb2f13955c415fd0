"""Inner distillation (Aflalo et al., 2020): the pruned student learns from its unpruned teacher's
block outputs as well as from the labels.

loss = CE(student logits, target) + G * mean over blocks of MSE(P_b(student block b), teacher block b)

where P_b is a learned 1x1 convolution from the student's width to the teacher's wherever they
differ (identity elsewhere). P_b starts as the channel embedding the pruning defined (student
channel j -> teacher channel keep[j]), so the loss starts at what the slicing lost.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import EfficientNet


def _block_names(model: EfficientNet) -> list[str]:
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


def _block_width(model: EfficientNet, name: str) -> int:
    return model.get_submodule(name).spec.out_chs


class InnerDistillationLoss(nn.Module):
    """Criterion `(logits, target) -> loss` for `effnet.train.fit(..., criterion=...)`.

    It reads the student's block outputs through forward hooks (only while the student is in
    training mode, so evaluation and EMA copies are unaffected), runs the frozen teacher on the
    same images, and adds the weighted feature loss to the classification loss. Pass
    `loss.projections.parameters()` as the training loop's extra parameters.

    Args:
        student: the pruned model being trained.
        teacher: the model it was cut from (same blocks and resolutions); it is frozen.
        weight: G, the feature loss's weight.
        keep: the pruning's kept indices per stage group ("stageS.out"), to initialise P_b.
        base_criterion: classification loss; cross-entropy (hard or soft targets) by default.
    """

    def __init__(self, student: EfficientNet, teacher: EfficientNet, weight: float = 1.0,
                 keep: Mapping[str, Tensor] | None = None,
                 base_criterion: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        super().__init__()
        names = _block_names(student)
        if names != _block_names(teacher):
            raise ValueError(f"student and teacher blocks differ ({len(names)} vs "
                             f"{len(_block_names(teacher))}); inner distillation pairs them one to one")
        self.weight = float(weight)
        self.base_criterion = base_criterion or F.cross_entropy
        self.block_names = names
        self._teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule, never trained
        self.projections = nn.ModuleDict()
        for name in names:
            s_w, t_w = _block_width(student, name), _block_width(teacher, name)
            if s_w != t_w:
                proj = nn.Conv2d(s_w, t_w, 1, bias=False)
                stage = int(name.split(".")[1])
                idx = (keep or {}).get(f"stage{stage}.out")
                with torch.no_grad():
                    if idx is not None and len(idx) == s_w:
                        proj.weight.zero_()
                        proj.weight[torch.as_tensor(idx), torch.arange(s_w), 0, 0] = 1.0
                self.projections[name.replace(".", "_")] = proj
        self._inputs: list[Tensor] = []
        self._feats: dict[str, Tensor] = {}
        self.last_feature_loss = 0.0
        self._handles = self._attach(student)

    @property
    def teacher(self) -> EfficientNet:
        return self._teacher[0]

    def _attach(self, student: EfficientNet) -> list:
        inputs, feats = self._inputs, self._feats

        def take_input(module: nn.Module, args: tuple) -> None:
            feats.clear()
            inputs.clear()
            if module.training:
                inputs.append(args[0])

        def take_block(name: str) -> Callable:
            def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
                if module.training and inputs:
                    feats[name] = out
            return hook

        handles = [student.register_forward_pre_hook(take_input)]
        handles += [student.get_submodule(n).register_forward_hook(take_block(n)) for n in self.block_names]
        return handles

    def detach_hooks(self) -> None:
        """Remove the hooks from the student (after training)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def teacher_features(self, x: Tensor) -> list[Tensor]:
        """The teacher's output after every block, for images `x`."""
        t = self.teacher
        if next(t.parameters()).device != x.device:
            t.to(x.device)
        t.eval()
        x = F.silu(t.bn1(t.conv_stem(x)))
        outs = []
        for stage in t.blocks:
            for block in stage:
                x = block(x)
                outs.append(x)
        return outs

    def feature_loss(self, student_feats: Mapping[str, Tensor], teacher_feats: list[Tensor]) -> Tensor:
        """Mean over blocks of the MSE between projected student and teacher block outputs."""
        losses = []
        for name, t_out in zip(self.block_names, teacher_feats):
            s_out = student_feats[name]
            key = name.replace(".", "_")
            if key in self.projections:
                proj = self.projections[key]
                if proj.weight.device != s_out.device:
                    proj.to(s_out.device)
                s_out = proj(s_out.to(proj.weight.dtype)).to(s_out.dtype)
            losses.append(F.mse_loss(s_out.float(), t_out.float()))
        return torch.stack(losses).mean()

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        loss = self.base_criterion(output, target)
        if not self._inputs or len(self._feats) != len(self.block_names) or self.weight == 0:
            return loss  # not a training forward of the student (e.g. validation): labels only
        feats = self.feature_loss(self._feats, self.teacher_features(self._inputs[0]))
        self._inputs.clear()
        self._feats.clear()
        self.last_feature_loss = float(feats.detach())
        return loss + self.weight * feats
