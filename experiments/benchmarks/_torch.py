"""The PyTorch contenders of transformer.py and resnet.py: the same models in eager PyTorch, started from the same weights.

PyTorch is not a dependency of this repository. Where it is installed, each
benchmark builds its model here as a PyTorch user writes it (``nn.Linear``,
``F.scaled_dot_product_attention``, ``nn.Conv2d``, ``nn.BatchNorm2d``, NCHW),
copies the jaxnets model's initial weights into it (so its first loss is
checked against the raw-JAX one) and times ``zero_grad``, forward,
``backward`` and ``optimizer.step`` per step, on the CPU threads PyTorch
starts with (one per core, as XLA:CPU uses). Where it is not installed the
benchmarks say so and leave the row out.
"""

from __future__ import annotations

import os

import numpy as np


def torch_or_none():
    """``torch``, or None where it is not installed.

    Its OpenMP threads are told to sleep when idle (``OMP_WAIT_POLICY=PASSIVE``,
    unless set): by default they spin after each operation, and in an
    interleaved benchmark that spinning takes the cores from the JAX contender
    timed next (one product alone measured 1.4-2.1x PyTorch's time with
    spinning threads beside it, 1.1-1.2x without; PyTorch's own time barely moves).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when libgomp starts: before the first import
    try:
        import torch
    except ImportError:
        return None
    return torch


def _tensor(torch, a):
    return torch.from_numpy(np.array(a, dtype=np.float32))


class _Run:
    """A contender for ``interleaved_medians``: ``calls`` eager training steps on one batch, then the last loss."""

    def __init__(self, step, calls):
        self.step, self.calls, self.loss = step, calls, None

    def __call__(self):
        for _ in range(self.calls):
            loss = self.step()
        self.loss = float(loss)  # a CPU tensor: reading it waits for nothing, but keeps the call honest


def gpt(raw_params: dict, size: dict, tokens, targets, calls: int):
    """nanoGPT in eager PyTorch on the raw-JAX GPT's params: ``(first_loss, run)``; AdamW(3e-4, weight decay 0.1)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    width, heads = size["width"], size["heads"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.c_fc, self.mlp_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, h):
            b, t, d = h.shape
            q, k, v = (a.view(b, t, heads, d // heads).transpose(1, 2) for a in self.c_attn(self.ln_1(h)).split(d, dim=2))
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
            h = h + self.c_proj(o)
            return h + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(h))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(size["vocab"], width)
            self.wpe = nn.Parameter(torch.zeros(size["context"], width))
            self.blocks = nn.ModuleList(Block() for _ in range(size["layers"]))
            self.ln_f = nn.LayerNorm(width)

        def forward(self, idx):
            h = self.wte(idx) + self.wpe[: idx.shape[1]]
            for block in self.blocks:
                h = block(h)
            return self.ln_f(h) @ self.wte.weight.T  # the head tied to the token embedding

    net = GPT()
    with torch.no_grad():
        net.wte.weight.copy_(_tensor(torch, raw_params["wte"]))
        net.wpe.copy_(_tensor(torch, raw_params["wpe"]))
        net.ln_f.weight.copy_(_tensor(torch, raw_params["ln_f"]["scale"]))
        net.ln_f.bias.copy_(_tensor(torch, raw_params["ln_f"]["bias"]))
        for block, p in zip(net.blocks, raw_params["blocks"]):
            for ln, q in ((block.ln_1, p["ln1"]), (block.ln_2, p["ln2"])):
                ln.weight.copy_(_tensor(torch, q["scale"]))
                ln.bias.copy_(_tensor(torch, q["bias"]))
            for linear, w, b in ((block.c_attn, "w_qkv", "b_qkv"), (block.c_proj, "w_o", "b_o"),
                                 (block.c_fc, "w_1", "b_1"), (block.mlp_proj, "w_2", "b_2")):
                linear.weight.copy_(_tensor(torch, p[w]).T)  # (in, out) -> PyTorch's (out, in)
                linear.bias.copy_(_tensor(torch, p[b]))
    x, y = torch.from_numpy(np.asarray(tokens, np.int64)), torch.from_numpy(np.asarray(targets, np.int64))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=0.1)

    def loss_of():
        logits = net(x)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))

    with torch.no_grad():
        first = float(loss_of())

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        opt.step()
        return loss.detach()

    return first, _Run(step, calls)


def resnet(params: dict, state: dict, size: dict, images, labels, momentum: float, eps: float, calls: int):
    """The benchmark's ResNet in eager PyTorch (NCHW) on the jaxnets model's params: ``(first_loss, run)``; SGD momentum."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SameConv(nn.Conv2d):
        """``nn.Conv2d`` with XLA's "SAME" padding: ``padding=k // 2`` where it is symmetric (stride 1), else an
        explicit ``F.pad`` (stride 2 on an even size pads one row and column after, none before), so the weights
        compute what the JAX models compute."""

        def forward(self, x):
            k, s = self.kernel_size[0], self.stride[0]
            if s == 1:
                return F.conv2d(x, self.weight, None, 1, k // 2)
            total = max((-(-x.shape[-1] // s) - 1) * s + k - x.shape[-1], 0)
            return F.conv2d(F.pad(x, (total // 2, total - total // 2) * 2), self.weight, None, s)

    def conv(w, stride=1):
        w = np.asarray(w)
        c = SameConv(w.shape[2], w.shape[3], w.shape[0], stride=stride, bias=False)
        with torch.no_grad():
            c.weight.copy_(_tensor(torch, w.transpose(3, 2, 0, 1)))  # HWIO -> OIHW
        return c

    def norm(p, s):
        bn = nn.BatchNorm2d(p["scale"].shape[0], eps=eps, momentum=1 - momentum)  # PyTorch's momentum is 1 - ours
        with torch.no_grad():
            bn.weight.copy_(_tensor(torch, p["scale"]))
            bn.bias.copy_(_tensor(torch, p["bias"]))
            bn.running_mean.copy_(_tensor(torch, s["mean"]))
            bn.running_var.copy_(_tensor(torch, s["var"]))
        return bn

    class Block(nn.Module):
        def __init__(self, p, s, stride):
            super().__init__()
            m, ms = p["serial_0"], s["serial_0"]
            self.conv1, self.bn1 = conv(m["conv_0"]["w"], stride), norm(m["batch_norm_0"], ms["batch_norm_0"])
            self.conv2, self.bn2 = conv(m["conv_1"]["w"]), norm(m["batch_norm_1"], ms["batch_norm_1"])
            self.short = None
            if "serial_1" in p:
                self.short = nn.Sequential(conv(p["serial_1"]["conv_0"]["w"], stride),
                                           norm(p["serial_1"]["batch_norm_0"], s["serial_1"]["batch_norm_0"]))

        def forward(self, x):
            m = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(m + (x if self.short is None else self.short(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(conv(params["conv_0"]["w"]), norm(params["batch_norm_0"], state["batch_norm_0"]),
                                      nn.ReLU())
            stages, i = [], 0
            while f"serial_{i}" in params:
                stages.append(Block(params[f"serial_{i}"]["parallel_0"], state[f"serial_{i}"]["parallel_0"],
                                    1 if i == 0 else 2))
                i += 1
            self.stages = nn.Sequential(*stages)
            self.fc = nn.Linear(*np.asarray(params["dense_0"]["w"]).shape)
            with torch.no_grad():
                self.fc.weight.copy_(_tensor(torch, params["dense_0"]["w"]).T)
                self.fc.bias.copy_(_tensor(torch, params["dense_0"]["b"]))

        def forward(self, x):
            return self.fc(self.stages(self.stem(x)).mean((2, 3)))

    net = ResNet().train()
    x = _tensor(torch, np.asarray(images).transpose(0, 3, 1, 2))  # NHWC -> NCHW
    y = torch.from_numpy(np.asarray(labels, np.int64))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    buffers = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        first = float(F.cross_entropy(net(x), y))  # training mode: batch statistics, as the JAX steps' first loss
    net.load_state_dict(buffers)  # that forward moved the running statistics; put them back

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return first, _Run(step, calls)
