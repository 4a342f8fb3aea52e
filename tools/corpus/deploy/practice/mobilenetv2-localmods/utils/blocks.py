"""Our MobileNetV2 block variant: timm's InvertedResidual with the channel attention moved onto the
residual branch's output (SE-ResNet placement) instead of the expanded features."""

from timm.models._efficientnet_blocks import InvertedResidual


class ECAInvertedResidual(InvertedResidual):
    """Same layers as timm's InvertedResidual (so checkpoints load unchanged); only the order in
    forward differs: conv_pw -> dw -> pwl -> attention (self.se) -> + shortcut."""

    def forward(self, x):
        shortcut = x
        x = self.conv_pw(x)
        x = self.bn1(x)
        x = self.conv_dw(x)
        x = self.bn2(x)
        x = self.aa(x)
        x = self.conv_pwl(x)
        x = self.bn3(x)
        x = self.se(x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x
