"""Plain ``nn.Module`` building blocks shared by the paper modules."""

from lightning_modules.nets.conv import SmallCNN

__all__ = ["SmallCNN"]
