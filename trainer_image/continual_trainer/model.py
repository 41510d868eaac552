"""Loading the base model and tokenizer, attaching the LoRA adapter, and encoding samples.

Everything that touches ``transformers``/``peft`` for model construction lives here, so that the rest of
the trainer reads as bookkeeping.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from continual_trainer.config import BaseModelSpec, LoraSpec, TrainingSpec
from continual_trainer.data import Sample
from continual_trainer.exitcodes import BadConfigError, BadDataError, TrainerError, TransientError
from continual_trainer.plan import derive_seed
from continual_trainer.records import TruncationSummary

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Encoded:
    """One tokenized sample: ``labels`` is ``IGNORE_INDEX`` where no loss is taken (prompt tokens)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def label_tokens(self) -> int:
        """Tokens that contribute to the loss (labels shift by one, so position 0 never does)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


def _hub_kwargs(base: BaseModelSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if base.revision:
        kwargs["revision"] = base.revision
    token = os.environ.get("HF_TOKEN")
    if token and base.id is not None:
        kwargs["token"] = token
    return kwargs


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it was raised from (transformers wraps hub errors in OSError)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _unreachable(exc: BaseException) -> bool:
    """Whether the hub could not be reached (retrying can help) rather than said no."""
    from huggingface_hub import errors

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.HfHubHTTPError) and isinstance(status, int):
        return status >= 500 or status in (408, 429)
    return isinstance(exc, errors.LocalEntryNotFoundError | ConnectionError | TimeoutError) or (
        type(exc).__module__.startswith(("httpx", "requests", "urllib3"))
        and any(word in type(exc).__name__ for word in ("Connect", "Timeout", "Network", "Protocol"))
    )


def load_error(what: str, base: BaseModelSpec, exc: BaseException) -> TrainerError:
    """Classify a failed ``from_pretrained``: the hub unreachable is transient, anything else permanent."""
    from huggingface_hub import errors

    causes = _causes(exc)
    if base.id is not None:
        if any(isinstance(c, errors.RevisionNotFoundError) for c in causes):
            return BadConfigError(
                f"baseModel.revision: {base.revision!r} is not a revision of {base.id!r} on the hub; set "
                "baseModel.revision to an existing commit, tag or branch"
            )
        if any(isinstance(c, errors.RepositoryNotFoundError) for c in causes):
            return BadConfigError(
                f"baseModel.id: {base.id!r} is not a model on the hub, or it is private or gated: fix "
                "baseModel.id, or give the trainer a token with access (HF_TOKEN)"
            )
        if any(_unreachable(c) for c in causes):
            return TransientError(
                f"baseModel.id: could not reach the Hugging Face Hub to get {base.id!r} (and it is not in the "
                f"local cache): {exc}. Retrying; check the network (or unset HF_HUB_OFFLINE), pre-fill the "
                "cache (HF_HOME), or save the model on the volume and use baseModel.path",
                reason="HubUnreachable",
            )
    field = "baseModel.path" if base.path is not None else "baseModel.id"
    return BadConfigError(
        f"{field}: cannot load {what} from {base.source!r} ({exc}); point baseModel.path at a folder "
        "written by save_pretrained, or baseModel.id at a hub model"
    )


def load_tokenizer(base: BaseModelSpec) -> PreTrainedTokenizerBase:
    """The base model's tokenizer; a pad token is borrowed from EOS when the tokenizer has none."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(base.source, **_hub_kwargs(base))
    except (OSError, ValueError) as exc:
        raise load_error("a tokenizer", base, exc) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(base: BaseModelSpec, lora: LoraSpec, training: TrainingSpec) -> PeftModel:
    """The base model with a freshly initialised LoRA adapter (seeded, so every process builds the same).

    The base weights are loaded in the compute precision (they are frozen); PEFT keeps the adapter in fp32.
    """
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base.source, dtype=DTYPES[training.precision], **_hub_kwargs(base)
        )
    except (OSError, ValueError) as exc:
        raise load_error("a causal LM", base, exc) from exc
    model.config.use_cache = False
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    unknown = [m for m in lora.target_modules if m not in names]
    if unknown:
        raise BadConfigError(
            f"lora.targetModules: {unknown} not found in the base model (its linear layers include e.g. "
            f"{sorted(n for n in names if n.endswith('proj'))[:8]}); fix lora.targetModules"
        )
    torch.manual_seed(derive_seed("lora-init", training.seed))
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias=lora.bias,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


#: Extra tokens a pre-cut text must yield beyond the ones kept, so that the cut's effect on the tokens just
#: before it (a merge that would have crossed it) stays clear of the ones kept.
CUT_MARGIN_TOKENS = 16


@dataclass(frozen=True)
class EncodedBatch:
    """A batch's encoded samples and what truncation to ``maxSeqLength`` cut off."""

    samples: list[Encoded]
    truncation: TruncationSummary | None  # None: nothing was truncated


@dataclass
class _Cutter:
    """Tokenize only a long text's head, when that provably gives the same first tokens as the whole.

    A 22 MB line is not tokenized whole (gigabytes of memory for tokens that are then dropped): its first
    ``budget`` characters are, with ``budget`` the tokens kept (plus a margin) times the longest token's
    length -- no token covers more characters than its vocabulary entry spells, so the kept tokens lie
    inside. A cut can still change the tokens right before it (a merge it broke); so the head is accepted
    only when two cuts (``budget`` and twice that) agree on every token kept, and both go on at least
    :data:`CUT_MARGIN_TOKENS` past them. Otherwise the budget doubles, up to the whole text.
    """

    tokenizer: PreTrainedTokenizerBase
    keep: int
    chars_per_token: int

    def ids(self, text: str, *, special: bool) -> tuple[list[int], int]:
        """The token ids of ``text`` (at least the first ``keep`` exact) and the characters not tokenized."""
        budget = (self.keep + CUT_MARGIN_TOKENS) * self.chars_per_token
        previous: list[int] | None = None
        while budget < len(text):
            ids = self._tokenize(text[:budget], special)
            if len(ids) >= self.keep + CUT_MARGIN_TOKENS:
                if previous is not None and previous[: self.keep] == ids[: self.keep]:
                    return previous, len(text) - budget // 2
                previous = ids
            else:
                previous = None  # the head is too short to judge: it drops characters (whitespace, say)
            budget *= 2
        return self._tokenize(text, special), 0

    def _tokenize(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])


def _longest_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """An upper bound on the characters one token covers: its longest vocabulary entry."""
    return max(8, max((len(token) for token in tokenizer.get_vocab()), default=0))


def encode(samples: list[Sample], tokenizer: PreTrainedTokenizerBase, max_len: int) -> list[Encoded]:
    """Tokenize every sample (truncated to ``max_len``); see :func:`encode_batch`."""
    return encode_batch(samples, tokenizer, max_len).samples


def encode_batch(samples: list[Sample], tokenizer: PreTrainedTokenizerBase, max_len: int) -> EncodedBatch:
    """Tokenize every sample, truncated to ``max_len``; a sample left with nothing to learn is bad data.

    Truncation is counted (samples, tokens dropped, characters of very long samples never tokenized) and
    logged as a warning: data the model does not see is never dropped without a word.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    cutter = _Cutter(tokenizer, max_len, _longest_token(tokenizer))
    out = []
    truncated: list[tuple[str, int, int]] = []  # origin, tokens dropped, characters not tokenized
    for sample in samples:
        if sample.text is not None:
            ids, uncut = cutter.ids(sample.text, special=True)
            ids += eos
            labels = list(ids)
        else:
            prompt, uncut_prompt = cutter.ids(sample.prompt or "", special=True)
            completion, uncut = cutter.ids(sample.completion or "", special=False)
            completion += eos
            uncut += uncut_prompt
            ids = prompt + completion
            labels = [IGNORE_INDEX] * len(prompt) + completion
        enc = Encoded(ids[:max_len], labels[:max_len])
        if enc.label_tokens == 0:
            raise BadDataError(
                f"{sample.origin}: no tokens left to learn from after truncation to "
                f"training.maxSeqLength={max_len} (the prompt fills it, or the text is a single token): "
                "shorten the prompt or raise maxSeqLength"
            )
        if len(ids) > max_len or uncut:
            truncated.append((sample.origin, len(ids) - max_len, uncut))
        out.append(enc)
    return EncodedBatch(out, _summarize(truncated, len(samples), max_len))


def _summarize(truncated: list[tuple[str, int, int]], total: int, max_len: int) -> TruncationSummary | None:
    if not truncated:
        return None
    summary = TruncationSummary(
        samples=len(truncated),
        tokens_dropped=sum(t[1] for t in truncated),
        characters_not_tokenized=sum(t[2] for t in truncated),
        first=truncated[0][0],
    )
    uncut = (
        f", and {summary.characters_not_tokenized} characters of very long samples were not even tokenized"
        if summary.characters_not_tokenized
        else ""
    )
    log.warning(
        "%s of %s samples are longer than training.maxSeqLength=%s tokens and were truncated (the first: %s): "
        "%s tokens dropped%s; raise maxSeqLength or split long samples to train on all of it",
        summary.samples,
        total,
        max_len,
        summary.first,
        summary.tokens_dropped,
        uncut,
    )
    return summary


def collate(samples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad one micro-batch."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
