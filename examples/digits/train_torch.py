"""Train the PyTorch digits CNN (digits_net.py) on scikit-learn's bundled digits set.

Same split as train.py (the 360 validation images are never trained on). Writes
``examples/digits/digits_torch.pt`` (a state_dict) and the NCHW data files
``calibration_data/digits/{calib,val}_nchw.npz``. Deterministic on CPU.

    python examples/digits/train_torch.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from digits_net import build  # noqa: E402
from train import CALIB_SIZE, load_data  # noqa: E402


def main() -> int:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, x_val, y_val = load_data()
    to_nchw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32)  # noqa: E731
    xt, xv = torch.from_numpy(to_nchw(x_train)), torch.from_numpy(to_nchw(x_val))
    yt = torch.from_numpy(y_train)
    model = build().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    for _epoch in range(40):
        order = torch.from_numpy(rng.permutation(len(xt)))
        for start in range(0, len(xt), 32):
            idx = order[start:start + 32]
            probs = model(xt[idx])
            loss = torch.nn.functional.nll_loss(torch.log(probs + 1e-7), yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(xv).argmax(1).numpy() == y_val).mean())
    torch.save(model.state_dict(), HERE / "digits_torch.pt")
    data = ROOT / "calibration_data" / "digits"
    np.savez_compressed(data / "calib_nchw.npz", image=to_nchw(x_train[:CALIB_SIZE]))
    np.savez_compressed(data / "val_nchw.npz", image=to_nchw(x_val), labels=y_val.astype(np.int64))
    print(f"parameters: {sum(p.numel() for p in model.parameters())}")
    print(f"validation accuracy: {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
