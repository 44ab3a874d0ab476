import pytest
import torch
from torch import nn

torch.set_num_threads(1)


class TinyCNN(nn.Module):
    """conv3x3 -> BN -> relu -> conv3x3(stride 2) -> BN -> relu, plus a 1x1 downsample shortcut, -> FC."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(5)
        self.down = nn.Conv2d(3, 5, 1, stride=2, bias=False)
        self.fc = nn.Linear(5, classes)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)) + self.down(h))
        return self.fc(h.mean(dim=(2, 3)))


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    m = TinyCNN()
    # Non-trivial BatchNorm statistics, so eval mode differs from train mode.
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 1, 8, 8) * 2 + 0.5)
    m.eval()
    return m
