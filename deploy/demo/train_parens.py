"""Train the paper's §6.1 proof of concept and export the demo dataset (needs PyTorch).

The parenthesis counting language: alphabet ``( ) 0 1 2 3 4``, parentheses balanced, nesting at
most 4 deep, and every digit equals the nesting level at its position — e.g.
``( 1 ( 2 ) ( ) ) 0 ( ( ( 3 ) ) 1 )``. A 2-layer LSTM language model (next-token prediction)
is trained on an endless stream of it with truncated back-propagation through time (the state
is carried across batches, so the model sees the same continuous regime it is exported in).

Exported for a held-out stream of ``--steps`` steps (one continuous stream, state carried over):

* ``cell_l1.npy``, ``hidden_l1.npy``, ``cell_l2.npy``, ``hidden_l2.npy`` — per-step ``c_t`` and
  ``h_t`` of both layers, ``(T, H)`` float16 (the model's weights copied into ``nn.LSTMCell``s
  stepped one token at a time, because ``nn.LSTM`` returns only the last layer's ``h_t``);
* ``tokens.npy`` — ``(T,)`` int32 token ids; ``vocab.txt`` — line ``i`` is token ``i``;
* ``nesting.npy`` — ``(T,)`` int32 nesting level *after* the token (an opening parenthesis that
  enters level 4 has level 4, the closing one that leaves it has level 3; a digit's level is its
  value);
* ``manifest.yml`` — the ingest manifest (``docs/ingest.md``): cell layers get the ``tanh``
  transform (as LSTMVis thresholded ``tanh(c)``), hidden layers ``none``;
* ``train_log.json`` — losses, digit accuracy (where a digit follows, is the most likely digit
  the right one: the level is the only way to know it), timings, level rates, arguments.

The optimum loss of this language is about 0.966 nats per token (the entropy of the next token
given the level); the model reaches it within the time budget.

Run (CPU, a few minutes; PyTorch in a throwaway venv, not in the project lock)::

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy pyyaml
    /tmp/torchvenv/bin/python deploy/demo/train_parens.py --out deploy/demo/data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

VOCAB = ["(", ")", "0", "1", "2", "3", "4"]
OPEN, CLOSE, DIGIT0 = 0, 1, 2
MAX_DEPTH = 4


def parens_stream(
    n: int, rng: np.random.Generator, depth: int = 0
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], int]:
    """``n`` tokens of the counting language starting at nesting ``depth``.

    Returns ``(tokens, levels, depth_at_end)``; ``levels[t]`` is the nesting level after token
    ``t``. At level ``L`` the next token is ``(`` (if ``L < 4``), ``)`` (if ``L > 0``) or the
    digit ``L``, with probabilities that keep every level common (level 4 is ~10 % of steps).
    """
    tokens = np.empty(n, np.int32)
    levels = np.empty(n, np.int32)
    u = rng.random(n)
    for t in range(n):
        if depth == 0:
            p_open, p_close = 0.5, 0.0
        elif depth == MAX_DEPTH:
            p_open, p_close = 0.0, 0.5
        else:
            p_open, p_close = 0.25, 0.3
        if u[t] < p_open:
            depth += 1
            tokens[t] = OPEN
        elif u[t] < p_open + p_close:
            depth -= 1
            tokens[t] = CLOSE
        else:
            tokens[t] = DIGIT0 + depth
        levels[t] = depth
    return tokens, levels, depth


def train(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    import torch
    from torch import nn

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(len(VOCAB), args.embed)
            self.lstm = nn.LSTM(args.embed, args.hidden, num_layers=2, batch_first=True)
            self.out = nn.Linear(args.hidden, len(VOCAB))

        def forward(self, x: Any, state: Any) -> Any:
            y, state = self.lstm(self.emb(x), state)
            return self.out(y), state

    model = LM()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    B, L = args.batch, args.bptt
    depths = [0] * B
    state: Any = None
    log: dict[str, Any] = {"losses": []}
    t0 = time.perf_counter()
    for it in range(args.iters):
        rows = []
        for b in range(B):
            toks, _, depths[b] = parens_stream(L + 1 if it == 0 else L, rng, depths[b])
            rows.append(toks)
        if it == 0:
            batch = torch.from_numpy(np.stack(rows)).long()
            prev_last = batch[:, -1:]
            x, y = batch[:, :-1], batch[:, 1:]
        else:
            cur = torch.from_numpy(np.stack(rows)).long()
            batch = torch.cat([prev_last, cur], dim=1)
            prev_last = cur[:, -1:]
            x, y = batch[:, :-1], batch[:, 1:]
        if state is not None:
            state = tuple(s.detach() for s in state)
        logits, state = model(x, state)
        loss = loss_fn(logits.reshape(-1, len(VOCAB)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if it % 50 == 0 or it == args.iters - 1:
            # which digit comes next is fully determined by the level: the most likely digit
            # being the right one (where a digit follows) shows that the model counts
            with torch.no_grad():
                pred = logits[..., DIGIT0:].argmax(-1) + DIGIT0
                is_digit = y >= DIGIT0
                acc = float(((pred == y) & is_digit).sum()) / max(1, int(is_digit.sum()))
            value = loss.item()
            entry = {"iter": it, "loss": round(value, 4), "digit_acc": round(acc, 4)}
            log["losses"].append(entry)
            print(f"iter {it:5d}  loss {value:.4f}  digit acc {acc:.3f}", flush=True)
        if time.perf_counter() - t0 > args.max_seconds:
            print(f"time budget reached after {it + 1} iterations", flush=True)
            break
    log["train_seconds"] = round(time.perf_counter() - t0, 1)
    return model, log


def export(model: Any, args: argparse.Namespace, log: dict[str, Any]) -> None:
    import torch
    from torch import nn

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed + 1)  # held out: another stream than training's
    tokens, levels, _ = parens_stream(args.steps, rng)
    # nn.LSTM returns h_t of the last layer only and never c_t per step: step LSTMCells instead
    cells = []
    for layer in range(2):
        in_size = args.embed if layer == 0 else args.hidden
        cell = nn.LSTMCell(in_size, args.hidden)
        with torch.no_grad():
            cell.weight_ih.copy_(getattr(model.lstm, f"weight_ih_l{layer}"))
            cell.weight_hh.copy_(getattr(model.lstm, f"weight_hh_l{layer}"))
            cell.bias_ih.copy_(getattr(model.lstm, f"bias_ih_l{layer}"))
            cell.bias_hh.copy_(getattr(model.lstm, f"bias_hh_l{layer}"))
        cells.append(cell)
    T, H = args.steps, args.hidden
    rec = {
        k: np.empty((T, H), np.float32) for k in ("cell_l1", "hidden_l1", "cell_l2", "hidden_l2")
    }
    h = [torch.zeros(1, H), torch.zeros(1, H)]
    c = [torch.zeros(1, H), torch.zeros(1, H)]
    correct = digits = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        emb = model.emb(torch.from_numpy(tokens).long())
        for t in range(T):
            x = emb[t : t + 1]
            for layer in range(2):
                h[layer], c[layer] = cells[layer](x, (h[layer], c[layer]))
                x = h[layer]
                rec[f"cell_l{layer + 1}"][t] = c[layer][0].numpy()
                rec[f"hidden_l{layer + 1}"][t] = h[layer][0].numpy()
            if t + 1 < T and tokens[t + 1] >= DIGIT0:
                digits += 1
                best_digit = int(model.out(x)[0, DIGIT0:].argmax().item()) + DIGIT0
                correct += int(best_digit == tokens[t + 1])
    log["export_seconds"] = round(time.perf_counter() - t0, 1)
    log["heldout_digit_acc"] = round(correct / max(1, digits), 4)
    print(f"held-out digit accuracy {correct / max(1, digits):.4f}", flush=True)
    for name, arr in rec.items():
        np.save(out / f"{name}.npy", arr.astype(np.float16))
    np.save(out / "tokens.npy", tokens.astype(np.int32))
    np.save(out / "nesting.npy", levels.astype(np.int32))
    (out / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    layers = "\n".join(
        f"  - {{name: {n}, source: {{file: {n}.npy}}, dtype: float16, "
        f"transform: {'tanh' if n.startswith('cell') else 'none'}, "
        f"kind: {'cell' if n.startswith('cell') else 'hidden'}}}"
        for n in rec
    )
    manifest = (
        "# Ingest manifest of the demo dataset (docs/ingest.md); written by train_parens.py\n"
        f"name: {args.name}\n"
        "description: >-\n"
        "  LSTMVis paper §6.1 proof of concept: a 2-layer LSTM language model "
        f"({args.hidden} cells per layer)\n"
        "  on the parenthesis counting language (nesting up to 4, digits equal the level);\n"
        f"  c_t and h_t of both layers over a held-out stream of {T} steps.\n"
        "layers:\n"
        f"{layers}\n"
        "tokens: {source: {file: tokens.npy}}\n"
        "vocab: {source: {file: vocab.txt}}\n"
        "tracks:\n"
        "  - {name: nesting, kind: discrete, source: {file: nesting.npy}, "
        "labels: ['0', '1', '2', '3', '4'],\n"
        "     description: nesting level after the token}\n"
    )
    (out / "manifest.yml").write_text(manifest)
    log["level_rates"] = {str(k): round(float(np.mean(levels == k)), 4) for k in range(5)}
    log["args"] = {k: str(v) for k, v in vars(args).items()}
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"wrote {out}: level rates {log['level_rates']}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    p.add_argument("--name", default="parens")
    p.add_argument("--steps", type=int, default=20_000, help="held-out steps to export")
    p.add_argument("--hidden", type=int, default=48, help="cells per layer")
    p.add_argument("--embed", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bptt", type=int, default=100)
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-seconds", type=float, default=240.0, help="training time budget")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    model, log = train(args)
    export(model, args, log)


if __name__ == "__main__":
    main()
