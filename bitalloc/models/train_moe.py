"""Train a small Mixtral-architecture MoE language model on the bundled wiki calibration text.

No package ships an MoE, and a random-initialised one routes uniformly, so the project trains its own:
transformers' ``MixtralForCausalLM`` (8 experts, top-2 by default) on the SmolLM2 tokenizer's ids
mapped to a reduced vocabulary (the most frequent ids of the training text; the rest become UNK).
The test-sized default trains in well under a minute on CPU; ``--hidden 256 --steps 3000`` is a GPU run.

    python -m bitalloc.models.train_moe --out runs/moe-tiny [--steps 300] [--device cpu]

The output folder is an ordinary transformers folder plus ``vocab_map.json`` and ``bitalloc.json``;
``load_trained_moe`` reads it back as a LoadedModel whose tokenizer is the VocabMap.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import token_stream
from bitalloc.errors import CorpusTooShort, InvalidInput
from bitalloc.models.loading import LoadedModel, load_model, state_hash

UNK, EOS = 0, 1


@dataclass(frozen=True)
class VocabMap:
    """A tokenizer over a reduced vocabulary: base ids -> compact ids (0 = UNK, 1 = EOS)."""

    base: object
    kept: tuple[int, ...]  # compact id -> base id, for ids >= 2

    @property
    def eos_token_id(self) -> int:
        """Compact id of the document separator."""
        return EOS

    @property
    def vocab_size(self) -> int:
        """Compact vocabulary size including UNK and EOS."""
        return len(self.kept) + 2

    def map_ids(self, base_ids: list[int]) -> list[int]:
        """Compact ids of ``base_ids`` (UNK where not kept)."""
        index = self._index()
        return [index.get(i, UNK) for i in base_ids]

    def _index(self) -> dict[int, int]:
        return {b: c + 2 for c, b in enumerate(self.kept)}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        """Tokenize like a Hugging Face tokenizer: {'input_ids': compact ids}."""
        return {"input_ids": self.map_ids(self.base(text, add_special_tokens=False)["input_ids"])}

    def save(self, path: Path) -> None:
        """Write the kept base ids as JSON."""
        path.write_text(json.dumps({"kept": list(self.kept)}))


def build_vocab_map(tokenizer, stream: torch.Tensor, vocab_size: int) -> VocabMap:
    """Keep the ``vocab_size - 2`` most frequent base ids of ``stream`` (ties broken by id)."""
    if vocab_size < 3:
        raise InvalidInput(f"vocab_size must be at least 3, got {vocab_size}")
    eos = getattr(tokenizer, "eos_token_id", None)
    counts = Counter(int(i) for i in stream.tolist() if i != eos)
    kept = sorted(counts, key=lambda i: (-counts[i], i))[: vocab_size - 2]
    return VocabMap(base=tokenizer, kept=tuple(kept))


@dataclass(frozen=True)
class MoeTrainConfig:
    """Model shape and training schedule; defaults are the test-sized CPU model."""

    vocab_size: int = 2048
    hidden: int = 64
    intermediate: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    experts: int = 8
    top_k: int = 2
    seq_len: int = 64
    batch: int = 16
    steps: int = 200
    lr: float = 3e-3
    aux_loss_coef: float = 0.001
    train_tokens: int = 150_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.experts < 2 or not 1 <= self.top_k <= self.experts:
            raise InvalidInput(f"need 2+ experts and 1 <= top_k <= experts, got {self.experts}, {self.top_k}")
        if self.hidden % self.heads:
            raise InvalidInput(f"hidden {self.hidden} must be a multiple of heads {self.heads}")


def mixtral_config(cfg: MoeTrainConfig):
    """The transformers MixtralConfig of ``cfg``."""
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        num_local_experts=cfg.experts,
        num_experts_per_tok=cfg.top_k,
        max_position_embeddings=max(cfg.seq_len, 512),
        tie_word_embeddings=True,
        router_aux_loss_coef=cfg.aux_loss_coef,
        output_router_logits=True,
        sliding_window=None,
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=UNK,
    )


def train_moe(
    cfg: MoeTrainConfig,
    out_dir: Path,
    *,
    device: str = "cpu",
    on_step: Callable[[int, int, float], None] | None = None,
) -> LoadedModel:
    """Train on the wiki calibration split, save to ``out_dir``, return the trained model in eval mode."""
    from transformers import MixtralForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        raise InvalidInput(f"{out_dir} already holds a model; choose an empty folder")
    base = load_model("smollm2-135m").tokenizer
    stream = token_stream(
        base, load_corpus("wiki", Split.CALIBRATION), max_tokens=cfg.train_tokens, seed=cfg.seed
    )
    needed = cfg.batch * cfg.seq_len * 4
    if stream.numel() < needed:
        raise CorpusTooShort(f"{stream.numel()} training tokens, fewer than {needed}; raise train_tokens")
    vocab = build_vocab_map(base, stream, cfg.vocab_size)
    ids = torch.tensor(vocab.map_ids(stream.tolist()))  # (tokens,)
    eos_base = getattr(base, "eos_token_id", None)
    ids[stream == eos_base] = EOS
    n_windows = ids.numel() // cfg.seq_len
    windows = ids[: n_windows * cfg.seq_len].view(n_windows, cfg.seq_len)  # (n, seq_len)
    torch.manual_seed(cfg.seed)
    model = MixtralForCausalLM(mixtral_config(cfg)).to(device)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(cfg.seed)
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in optim.param_groups:
            group["lr"] = lr
        batch = windows[torch.randint(0, n_windows, (cfg.batch,), generator=generator)].to(device)
        loss = model(input_ids=batch, labels=batch).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        if on_step is not None:
            on_step(step + 1, cfg.steps, loss.item())
    model.eval().requires_grad_(False)
    model.config.output_router_logits = False
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    vocab.save(out_dir / "vocab_map.json")
    model_hash = state_hash(model)
    meta = {"model_hash": model_hash, "train": asdict(cfg), "base_tokenizer": "smollm2-135m"}
    (out_dir / "bitalloc.json").write_text(json.dumps(meta, indent=2))
    return LoadedModel(model=model, tokenizer=vocab, name=str(out_dir), model_hash=model_hash)


def load_trained_moe(path: Path | str, *, device: str = "cpu") -> LoadedModel:
    """Read a folder written by ``train_moe``."""
    from transformers import MixtralForCausalLM

    path = Path(path)
    if not (path / "vocab_map.json").exists():
        raise InvalidInput(f"{path} is not a folder written by train_moe (no vocab_map.json)")
    model = (
        MixtralForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval().requires_grad_(False)
    )
    base = load_model("smollm2-135m").tokenizer
    vocab = VocabMap(base=base, kept=tuple(json.loads((path / "vocab_map.json").read_text())["kept"]))
    model_hash = json.loads((path / "bitalloc.json").read_text())["model_hash"]
    return LoadedModel(model=model, tokenizer=vocab, name=str(path), model_hash=model_hash)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    defaults = MoeTrainConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    cfg = MoeTrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})

    def report(step: int, total: int, loss: float) -> None:
        if step % 25 == 0 or step == total:
            print(f"step {step}/{total} loss {loss:.3f}", flush=True)

    loaded = train_moe(cfg, args.out, device=args.device, on_step=report)
    from bitalloc.data.windows import calibration_windows
    from bitalloc.sensitivity.experts import record_routing

    windows = calibration_windows(
        loaded.tokenizer, load_corpus("wiki", Split.EVALUATION), n_windows=16, seq_len=cfg.seq_len, seed=1
    )
    print(routing_markdown(record_routing(loaded.model, windows.to(args.device)).table()))


def routing_markdown(rows: list[dict]) -> str:
    """Per-expert frequency table: one row per layer, one column per expert (percent of tokens)."""
    modules = list(dict.fromkeys(r["module"] for r in rows))
    experts = sorted({r["expert"] for r in rows})
    lines = [
        "| layer | " + " | ".join(f"e{e}" for e in experts) + " | max/min |",
        "|---" * (len(experts) + 2) + "|",
    ]
    for m in modules:
        freq = [r["frequency"] for r in rows if r["module"] == m]
        ratio = f"{max(freq) / min(freq):.1f}" if min(freq) > 0 else "inf"
        lines.append(f"| {m} | " + " | ".join(f"{100 * f:.1f}%" for f in freq) + f" | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
