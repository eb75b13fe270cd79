"""The frozen teacher's outputs on training texts, kept in memory so a second pass need not recompute them.

Block-wise distillation's later epochs, recovery and the equal-budget baselines all run the same frozen
teacher on the same training texts; on 2 CPU cores its forward is ~45 % of a block-wise step. The cache
keeps, per text, the hidden states at every block boundary (the first block's input and each block's
output, fp16, only the text's real tokens) and the logits (fp32), keyed by the text's token ids, under a
byte budget: texts beyond it are recomputed each time.
"""

from __future__ import annotations

import torch


class TeacherCache:
    """Per-text teacher outputs: ``hidden`` ``(blocks + 1, tokens, H)`` fp16 and ``logits`` (fp32).

    ``hidden[0]`` is the first block's input, ``hidden[i + 1]`` block ``i``'s output. A batch is served
    only when every one of its texts is cached (``get`` returns None otherwise).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.rows: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0
        self.enabled = max_bytes > 0
        self.per_token = False  # token tasks: logits (B, S, C), stored for the real tokens only

    @staticmethod
    def keys(batch: dict[str, torch.Tensor]) -> list[bytes]:
        """One key per text: its real token ids (and token types: a pair's second segment differs)."""
        mask = batch["attention_mask"].bool().cpu()
        ids, types = batch["input_ids"].cpu(), batch.get("token_type_ids")
        types = types.cpu() if types is not None else None
        out = []
        for b in range(ids.shape[0]):
            key = ids[b][mask[b]].numpy().tobytes()
            if types is not None:
                key += b"|" + types[b][mask[b]].numpy().tobytes()
            out.append(key)
        return out

    def put(self, batch: dict[str, torch.Tensor], hidden: list[torch.Tensor], logits: torch.Tensor) -> None:
        """Store the texts of ``batch`` not stored yet, while the budget lasts.

        ``hidden``: ``blocks + 1`` tensors ``(B, S, H)``; ``logits``: ``(B, C)`` or per token ``(B, S, C)``.
        A batch whose hidden states overflow fp16 is not stored.
        """
        if not self.enabled:
            return
        mask = batch["attention_mask"].bool()
        stacked = torch.stack([h.detach() for h in hidden]).to(torch.float16)  # (blocks + 1, B, S, H)
        if not torch.isfinite(stacked).all():
            return
        stacked, logits = stacked.cpu(), logits.detach().float().cpu()
        mask, self.per_token = mask.cpu(), logits.dim() == 3
        for b, key in enumerate(self.keys(batch)):
            if key in self.rows:
                continue
            h = stacked[:, b][:, mask[b]].clone()
            lg = logits[b][mask[b]].clone() if self.per_token else logits[b].clone()
            size = h.numel() * h.element_size() + lg.numel() * lg.element_size()
            if self.bytes + size > self.max_bytes:
                return
            self.rows[key] = (h, lg)
            self.bytes += size

    def get(self, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        """``(hidden, logits)`` for ``batch`` in fp32 on its device (zeros at padding), or None if any text
        is missing."""
        if not self.enabled:
            return None
        rows = [self.rows.get(k) for k in self.keys(batch)]
        if any(r is None for r in rows):
            self.misses += 1
            return None
        self.hits += 1
        mask = batch["attention_mask"].bool().cpu()
        n, width, classes = rows[0][0].shape[0], rows[0][0].shape[-1], rows[0][1].shape[-1]
        hidden = torch.zeros(n, *mask.shape, width)
        logits = torch.zeros(*mask.shape, classes) if self.per_token else torch.stack([r[1] for r in rows])
        for b, (h, lg) in enumerate(rows):
            hidden[:, b, mask[b]] = h.float()
            if self.per_token:
                logits[b, mask[b]] = lg
        device = batch["input_ids"].device
        return [h.to(device) for h in hidden], logits.to(device)
