"""The frozen teacher's outputs on training texts, kept in memory so a second pass need not recompute them.

Block-wise distillation's later epochs, recovery and the equal-budget baselines all run the same frozen
teacher on the same training texts; on 2 CPU cores its forward is ~45 % of a block-wise step. The cache
keeps, per text, the hidden states at every block boundary (the first block's input and each block's
output, fp16, only the text's real tokens) and the logits (fp32), keyed by the text's token ids, under a
byte budget: texts beyond it are recomputed each time — only they: a batch with some cached texts runs the
teacher on its missing texts alone (``partial``), so a cache that holds 85 % of the texts saves ~85 % of the
teacher's work, not only the rare batch whose every text it holds.
"""

from __future__ import annotations

import torch


class TeacherCache:
    """Per-text teacher outputs: ``hidden`` ``(blocks + 1, tokens, H)`` fp16 and ``logits`` (fp32).

    ``hidden[0]`` is the first block's input, ``hidden[i + 1]`` block ``i``'s output. ``get`` serves a batch
    whose every text is cached (``hits``); ``get(batch, fresh=...)`` one whose missing texts were just
    computed (``partial``).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.rows: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = self.partial = 0
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

    def put(
        self, batch: dict[str, torch.Tensor], hidden: list[torch.Tensor], logits: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Store the texts of ``batch`` not stored yet, while the budget lasts; returns every text's row
        (``rows_of``), stored or not.

        ``hidden``: ``blocks + 1`` tensors ``(B, S, H)``; ``logits``: ``(B, C)`` or per token ``(B, S, C)``.
        A batch whose hidden states overflow fp16 is not stored (returns None).
        """
        if not self.enabled:
            return None
        rows = self.rows_of(batch, hidden, logits)
        for key, row in zip(self.keys(batch), rows or (), strict=False):
            if key in self.rows:
                continue
            size = sum(t.numel() * t.element_size() for t in row)
            if self.bytes + size > self.max_bytes:
                break
            self.rows[key] = row
            self.bytes += size
        return rows

    def rows_of(
        self, batch: dict[str, torch.Tensor], hidden: list[torch.Tensor], logits: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per text of ``batch``, the row the cache keeps for it (fp16 hidden states and the logits at its real
        tokens); None when the hidden states overflow fp16."""
        mask = batch["attention_mask"].bool()
        stacked = torch.stack([h.detach() for h in hidden]).to(torch.float16)  # (blocks + 1, B, S, H)
        if not torch.isfinite(stacked).all():
            return None
        stacked, logits = stacked.cpu(), logits.detach().float().cpu()
        mask, self.per_token = mask.cpu(), logits.dim() == 3
        return [
            (stacked[:, b][:, mask[b]].clone(), (logits[b][mask[b]] if self.per_token else logits[b]).clone())
            for b in range(mask.shape[0])
        ]

    def missing(self, batch: dict[str, torch.Tensor]) -> list[int]:
        """Indices of the texts of ``batch`` the cache does not hold."""
        return [i for i, key in enumerate(self.keys(batch)) if key not in self.rows]

    def get(
        self, batch: dict[str, torch.Tensor], fresh: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        """``(hidden, logits)`` for ``batch`` in fp32 on its device (zeros at padding), or None if any text
        is missing. ``fresh``: rows (``rows_of``) for texts just computed, by their index in ``batch``."""
        if not self.enabled:
            return None
        rows = [self.rows.get(k) for k in self.keys(batch)]
        for i, row in (fresh or {}).items():
            rows[i] = row
        if any(r is None for r in rows):
            self.misses += 1
            return None
        if fresh:
            self.partial += 1
        else:
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
