"""Knowledge distillation of YOLOv5: a yolov5n student learns from a yolov5s teacher.

The training wrapper a practitioner writes around the package's own DetectionModel: the student and
the (frozen) teacher are yolov5's models built from the yaml files yolov5 ships, at two scales;
1x1 adapters map the student's neck features onto the teacher's for feature imitation (FitNets), and
the detection outputs are distilled with a temperature.  At inference the wrapper runs the student.
"""

import torch
import torch.nn.functional as F
from torch import nn


class FeatureAdapter(nn.Module):
    """1x1 conv + BN that lifts a student feature map to the teacher's width."""

    def __init__(self, c_student, c_teacher):
        super().__init__()
        self.conv = nn.Conv2d(c_student, c_teacher, 1, 1, 0, bias=False)
        self.bn = nn.BatchNorm2d(c_teacher)

    def forward(self, x):
        return self.bn(self.conv(x))


class Distiller(nn.Module):
    def __init__(self, student, teacher, temperature=4.0, alpha=0.5, feature_weight=1.0):
        super().__init__()
        self.student = student
        self.teacher = teacher
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha
        self.feature_weight = feature_weight
        self.hooked_layers = list(student.model[-1].f)  # the neck outputs the Detect head reads
        channels = [(s.conv.out_channels, t.conv.out_channels) for s, t in self._neck_convs()]
        self.adapters = nn.ModuleList(FeatureAdapter(cs, ct) for cs, ct in channels)

    def _neck_convs(self):
        pairs = []
        for k in self.hooked_layers:
            s, t = self.student.model[k], self.teacher.model[k]
            pairs.append((s.cv3, t.cv3))  # both are C3 blocks in yolov5's yaml files
        return pairs

    def train(self, mode=True):
        super().train(mode)
        self.teacher.eval()  # the teacher never trains
        return self

    def forward(self, x):
        return self.student(x)

    def distillation_loss(self, x):
        """The KD part of the training loss (detection loss of the student is added by the trainer)."""
        student_feats, teacher_feats = [], []
        handles = [
            s.register_forward_hook(lambda m, i, o: student_feats.append(o)) for s, _ in self._neck_convs()
        ] + [t.register_forward_hook(lambda m, i, o: teacher_feats.append(o)) for _, t in self._neck_convs()]
        try:
            student_out = self.student(x)
            with torch.no_grad():
                teacher_out = self.teacher(x)
        finally:
            for handle in handles:
                handle.remove()
        loss = x.new_zeros(())
        for adapter, fs, ft in zip(self.adapters, student_feats, teacher_feats):
            loss = loss + self.feature_weight * F.mse_loss(adapter(fs), ft)
        for ps, pt in zip(student_out, teacher_out):
            t = self.temperature
            loss = loss + self.alpha * t * t * F.kl_div(
                F.log_softmax(ps[..., 5:] / t, -1), F.softmax(pt[..., 5:] / t, -1), reduction="batchmean"
            )
        return loss
