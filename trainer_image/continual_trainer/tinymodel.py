"""A tiny causal LM built locally: the demo's "bundled" base model and the tests' fixture.

No weights are shipped or downloaded: a byte-level BPE tokenizer is trained with ``tokenizers`` on a small
corpus, a 2-layer Llama (hidden size 64) is initialised from a fixed seed, and both are written with
``save_pretrained`` -- so everything downstream loads them through the real ``from_pretrained`` path, as it
would a real model on the run's volume.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_BATCHES = ("batch-001.jsonl", "batch-002.jsonl", "batch-003.txt")


def demo_corpus() -> list[str]:
    """The text of the bundled demo batches (also the tokenizer's training corpus)."""
    lines = []
    for name in DEMO_BATCHES:
        lines.extend(resources.files("continual_trainer.demo_data").joinpath(name).read_text().splitlines())
    return lines


def copy_demo_batches(dest: Path) -> list[Path]:
    """Write the three bundled toy batches into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in DEMO_BATCHES:
        path = dest / name
        path.write_text(resources.files("continual_trainer.demo_data").joinpath(name).read_text())
        out.append(path)
    return out


def build_tiny_model(
    path: Path, *, hidden: int = 64, layers: int = 2, vocab: int = 512, seed: int = 0
) -> Path:
    """Create (once) a tiny Llama + tokenizer in ``path``; return ``path``."""
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(demo_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tmp = path.with_name(path.name + ".tmp")
    fast.save_pretrained(str(tmp))
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(tmp))
    tmp.rename(path)
    return path


def _main() -> None:
    """``python -m continual_trainer.tinymodel DEST [--inbox DIR]``: build the model (and copy the batches)."""
    import argparse

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--inbox", type=Path, help="also write the three demo batches here")
    args = parser.parse_args()
    build_tiny_model(args.dest)
    if args.inbox is not None:
        copy_demo_batches(args.inbox)


if __name__ == "__main__":
    _main()
