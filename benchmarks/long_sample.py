"""A very long sample: memory and time of encoding it, cut before tokenizing vs tokenized whole.

The issue's case: a 22 MB single line was tokenized whole (2.9 GB RSS) and 99.99 % of it dropped. Each
measurement runs in a fresh process (peak RSS is per process): the tiny model's tokenizer is loaded, the
line built, then ``encode_batch`` runs; the numbers are the peak RSS growth (VmHWM after minus VmRSS
before, with the peak reset first) and the wall time of the encode. The whole-text tokenization is measured on a tenth of the line
(it grows linearly; the full line takes minutes). Goal: the cut line costs under 50 MiB and 1 s,
whatever its length.

Usage: python benchmarks/long_sample.py [--mb 22 --max-seq-length 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(model: Path, chars: int, max_len: int, whole: bool) -> None:
    from continual_trainer import model as modeling
    from continual_trainer.config import BaseModelSpec
    from continual_trainer.data import Sample

    tokenizer = modeling.load_tokenizer(BaseModelSpec(path=str(model)))
    text = ("continual " * (chars // 10 + 1))[:chars]
    clear_refs = Path("/proc/self/clear_refs")
    clear_refs.write_text("5")  # resets VmHWM to the current RSS: the peak below is the encode's own
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    if whole:
        ids = tokenizer(text)["input_ids"][:max_len]
    else:
        ids = modeling.encode_batch([Sample("big.txt:1", text=text)], tokenizer, max_len).samples[0].input_ids
    seconds = time.perf_counter() - started
    grown = (_status_kib("VmHWM") - before) / 1024
    print(json.dumps({"seconds": round(seconds, 3), "peak_mib": round(grown, 1), "kept": len(ids)}))


def measure(model: Path, chars: int, max_len: int, whole: bool) -> dict[str, float]:
    argv = [sys.executable, __file__, "--child", str(model), str(chars), str(max_len), "1" if whole else "0"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=dict(os.environ))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, chars, max_len, whole = sys.argv[2:6]
        child(Path(model), int(chars), int(max_len), whole == "1")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=22.0)
    parser.add_argument("--max-seq-length", type=int, default=512)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from continual_trainer.tinymodel import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny-llama")
        chars = int(args.mb * 1_000_000)
        cut = measure(model, chars, args.max_seq_length, whole=False)
        whole_tenth = measure(model, chars // 10, args.max_seq_length, whole=True)
    print(f"{args.mb:g} MB line, cut before tokenizing: {cut['seconds']} s, +{cut['peak_mib']} MiB peak RSS")
    print(
        f"{args.mb / 10:g} MB line, tokenized whole: {whole_tenth['seconds']} s, +{whole_tenth['peak_mib']} "
        f"MiB peak RSS (x10 for the full line: ~{whole_tenth['seconds'] * 10:.0f} s, "
        f"~{whole_tenth['peak_mib'] * 10:.0f} MiB)"
    )
    print(
        f"goal: cut < 50 MiB and < 1 s: {'met' if cut['peak_mib'] < 50 and cut['seconds'] < 1 else 'NOT met'}; "
        f"memory ratio whole(full, extrapolated)/cut: {whole_tenth['peak_mib'] * 10 / max(cut['peak_mib'], 0.1):.0f}x"
    )


if __name__ == "__main__":
    main()
