"""Consolidation: the latest adapter merged into the base model, checked, published as a plain HF folder.

One tiny run is trained once per module (one batch, a real trainer process); each test consolidates it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from tests.trainer.helpers import DEMO_BATCHES, make_config, run_trainer

from continual_trainer.config import ObjectStoreClientSpec, TrainerConfig
from continual_trainer.consolidate import check, merge
from continual_trainer.consolidate.job import CheckFailedError, ConsolidationRequest, consolidate

SMALL_SHARDS = 60_000  # bytes: the tiny model's merged weights then span several shards


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainerConfig:
    """A volume holding the base model, one trained batch and its exported adapter."""
    volume = tmp_path_factory.mktemp("consolidate") / "volume"
    shutil.copytree(tiny_model, volume / "models" / "tiny")
    batch, data = DEMO_BATCHES[0]
    (volume / "inbox").mkdir()
    shutil.copy(data, volume / "inbox" / data.name)
    config = make_config(
        volume / "run", volume / "models" / "tiny", batch, volume / "inbox" / data.name, data_root=volume
    )
    outcome = run_trainer(config)
    assert outcome.code == 0, outcome.stderr[-3000:]
    return config


def _volume(config: TrainerConfig) -> Path:
    return Path(str(config.data_root))


def _write_config(config: TrainerConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    return path


def _cli(config: TrainerConfig, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    cfg = _write_config(config, _volume(config).parent / "consolidate.yaml")
    term = Path(str(config.termination_message_path))
    term.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "continual_trainer.consolidate", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    result = json.loads(term.read_text()) if term.exists() else {}
    return proc.returncode, result, proc.stderr


def _reference_logits(config: TrainerConfig, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(base alone, base + adapter through PEFT), both fp32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(config.base_model.path), dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, str(config.root / "adapters" / "latest")).eval()
        return plain, adapted(input_ids=ids).logits


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".staging-" in p.name or ".previous-" in p.name)


def test_the_merged_folder_loads_without_peft_and_matches_base_plus_adapter(trained):
    code, result, stderr = _cli(trained, "--output", "models/merged", "--max-shard-bytes", str(SMALL_SHARDS))
    assert code == 0, stderr[-3000:]
    out = _volume(trained) / "models" / "merged"
    assert result["kind"] == "consolidation"
    assert result["output"] == str(out.resolve())
    assert (result["globalStep"], result["batches"], result["dtype"]) == (6, 1, "float32")
    assert result["tolerance"] == 1e-4
    assert 0 <= result["maxAbsDiff"] <= 1e-4
    # sharded, indexed, with config, generation config, tokenizer, card and manifest
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) == result["shards"] > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    for name in ("config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert (
        str(trained.base_model.path) in card
        and "| global step | 6 |" in card
        and "| batches trained | 1 |" in card
    )
    manifest = json.loads((out / "consolidation.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.name for p in out.iterdir()} - {"consolidation.json"}
    assert set(listed) == on_disk
    for name, entry in listed.items():
        data = (out / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])
    assert manifest["check"]["tolerance"] == 1e-4 and manifest["check"]["maxAbsDiff"] == result["maxAbsDiff"]
    run_record = json.loads((trained.root / "ledger" / "run.json").read_text())
    assert manifest["baseModel"]["configSha256"] == run_record["model"]["configSha256"]
    assert _leftovers(out.parent) == []

    # plain transformers (no PEFT) loads it, and its logits are base + adapter's, not the base's
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert not hasattr(merged, "peft_config")
    ids = check.probe_ids(merged.config.vocab_size)
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    plain, adapted = _reference_logits(trained, ids)
    assert float((got - adapted).abs().max()) <= 1e-4
    assert float((plain - adapted).abs().max()) > 1e-2  # the adapter matters: the check can tell


def test_bf16_output_is_merged_in_fp32_and_cast_once_within_a_measured_tolerance(trained):
    result = consolidate(trained, ConsolidationRequest("models/merged-bf16", dtype="bfloat16"))
    out = Path(str(result.output))
    assert result.dtype == "bfloat16" and result.tolerance is not None and result.max_abs_diff is not None
    assert result.max_abs_diff <= result.tolerance
    manifest = json.loads((out / "consolidation.json").read_text())
    drift = manifest["check"]["roundingDrift"]
    assert drift > 0 and result.tolerance == max(1e-4, check.ROUNDED_FACTOR * drift)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    # each merged weight is exactly round_bf16(W_fp32 + scale * B @ A): one cast, from the original
    from safetensors.torch import load_file

    adapter = load_file(str(trained.root / "adapters" / "latest" / "adapter_model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    base_file = Path(str(trained.base_model.path)) / "model.safetensors"
    with safe_open(str(base_file), framework="pt") as handle:
        w = handle.get_tensor(key)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    delta = adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"] * (8 / 4)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    with safe_open(str(out / index["weight_map"][key]), framework="pt") as handle:
        merged_w = handle.get_tensor(key)
    assert merged_w.dtype == torch.bfloat16
    assert torch.equal(merged_w, (w.float() + delta).to(torch.bfloat16))


def test_the_streamed_check_computes_the_in_memory_models_logits_bit_for_bit(trained, monkeypatch):
    """The check streams weights module by module; its logits are those of the models loaded whole (fp32
    reference, the reference rounded to bf16, the merged folder), and it reads one module's weights at a time."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = consolidate(
        trained, ConsolidationRequest("models/merged-streamed", max_shard_bytes=SMALL_SHARDS)
    )
    out, base = Path(str(result.output)), Path(str(trained.base_model.path))
    adapter = trained.root / "adapters" / "latest"
    ids = check.probe_ids(check.vocab_size(base))
    reads: list[list[str]] = []
    real_read = check._Weights.read
    monkeypatch.setattr(
        check._Weights, "read", lambda self, names: reads.append(names) or real_read(self, names)
    )

    with torch.no_grad():  # what the check computed before it streamed: both models loaded whole
        whole = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
        reference = PeftModel.from_pretrained(whole, str(adapter)).eval()
        expected = reference(input_ids=ids).logits
        for param in reference.parameters():
            param.copy_(param.to(torch.bfloat16).float())
        rounded = reference(input_ids=ids).logits
        merged = (
            AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()(input_ids=ids).logits
        )

    assert torch.equal(check.reference_logits(base, adapter, ids), expected)
    assert torch.equal(check.reference_logits(base, adapter, ids, torch.bfloat16), rounded)
    reads.clear()
    assert torch.equal(check.model_logits(out, ids), merged)
    assert result.max_abs_diff == float((merged - expected).abs().max())
    # every weight of the merged folder read, one module's at a time (a weight, at most with its bias)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert {name for names in reads for name in names} == set(index)
    assert max(len(names) for names in reads) <= 2


def test_a_trained_bias_replaces_the_base_s_in_the_streamed_reference(tiny_model, tmp_path):
    """An adapter's own value for a streamed module's weight (bias="all") is the one the reference uses."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(tiny_model))
    config.attention_bias = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(tmp_path / "biased"))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], bias="all")
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.05)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert any(key.endswith("k_proj.bias") for key in saved)  # a bias of a module without LoRA, too

    ids = check.probe_ids(config.vocab_size)
    whole = AutoModelForCausalLM.from_pretrained(str(tmp_path / "biased"), dtype=torch.float32).eval()
    with torch.no_grad():
        plain = whole(input_ids=ids).logits
        expected = PeftModel.from_pretrained(whole, str(tmp_path / "adapter")).eval()(input_ids=ids).logits
    streamed = check.reference_logits(tmp_path / "biased", tmp_path / "adapter", ids)
    assert torch.equal(streamed, expected)
    assert float((expected - plain).abs().max()) > 1e-3


def test_a_weight_read_outside_its_modules_forward_fails_the_streamed_check_loudly(tiny_model, monkeypatch):
    """Such a weight is never streamed in; F.linear on a meta weight returns uninitialised memory instead of
    raising, so the check must refuse it rather than compare garbage logits."""
    import torch.nn.functional as F  # noqa: N812
    from transformers.models.llama import modeling_llama

    def mlp_reading_its_children(self, x):  # the children's weights, without calling the children
        gate, up = F.linear(x, self.gate_proj.weight), F.linear(x, self.up_proj.weight)
        return F.linear(F.silu(gate) * up, self.down_proj.weight)

    ids = check.probe_ids(check.vocab_size(tiny_model))
    assert check.model_logits(tiny_model, ids).isfinite().all()
    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", mlp_reading_its_children)
    with pytest.raises(check.StreamedCheckError, match="outside its module's forward") as caught:
        check.model_logits(tiny_model, ids)
    assert caught.value.exit_code == 64 and caught.value.reason == "ConsolidationCheckUnsupported"


def test_a_wrong_merge_is_caught_and_nothing_is_published(trained, monkeypatch):
    right = merge.lora_delta
    monkeypatch.setattr(merge, "lora_delta", lambda pair, a, b: 2 * right(pair, a, b))  # a scale bug
    out = _volume(trained) / "models" / "wrong"
    with pytest.raises(CheckFailedError, match="nothing was published") as caught:
        consolidate(trained, ConsolidationRequest("models/wrong"))
    assert caught.value.exit_code == 64
    assert not out.exists() and _leftovers(out.parent) == []


def test_an_existing_consolidation_is_replaced_only_when_the_new_one_is_complete(trained, monkeypatch):
    first = consolidate(trained, ConsolidationRequest("models/replaced"))
    out = Path(str(first.output))
    before = (out / "consolidation.json").read_text()
    monkeypatch.setattr(merge, "lora_delta", lambda *_: torch.zeros(1))  # a broken merge
    with pytest.raises(CheckFailedError):
        consolidate(trained, ConsolidationRequest("models/replaced"))
    assert (out / "consolidation.json").read_text() == before  # the old one is still there, whole
    monkeypatch.undo()
    second = consolidate(trained, ConsolidationRequest("models/replaced"))
    assert second.output == first.output
    assert (
        json.loads((out / "consolidation.json").read_text())["startedAt"] >= json.loads(before)["startedAt"]
    )
    assert _leftovers(out.parent) == []


def test_sigterm_before_the_publish_exits_85_and_publishes_nothing(trained):
    import os

    env = dict(os.environ, CONTINUAL_TRAINER_FAILPOINTS="phase@publish=term")
    code, result, stderr = _cli(trained, "--output", "models/preempted", env=env)
    assert (code, result["reason"]) == (85, "Preempted"), stderr[-2000:]
    assert "nothing was published" in result["message"]
    out = _volume(trained) / "models" / "preempted"
    assert not out.exists() and _leftovers(out.parent) == []


# -- bad cases: a clear refusal (exit 64), nothing published, the run untouched ----------------------------
def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path below ``folder`` with its size and mtime (ns): what "untouched" means (the lock file
    holds the pid of whoever took the lock last; the test's termination message lies on the volume too)."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.name != ".lock" and not p.name.startswith("term-")
    }


@pytest.mark.parametrize(
    ("output", "reason", "says"),
    [
        ("../outside", "PathOutsideDataRoot", "outside the data root"),
        ("/etc/merged", "PathOutsideDataRoot", "outside the data root"),
        ("run", "OutputNotWritable", "which a consolidation must not"),
        (".", "OutputNotWritable", "which a consolidation must not"),
        ("models/tiny", "OutputNotWritable", "which a consolidation must not"),
        ("models", "OutputNotWritable", "which a consolidation must not"),
        ("run/checkpoints/merged", "OutputNotWritable", "lies in the run folder"),
        ("run/merged", "OutputNotWritable", "lies in the run folder"),
        ("models/tiny/merged", "OutputNotWritable", "lies in the base model"),
        ("inbox", "OutputNotWritable", "is not a consolidation"),
        ("a-file/merged", "UnresolvablePath", "Not a directory"),
    ],
)
def test_an_output_that_escapes_the_volume_or_would_damage_it_is_refused(trained, output, reason, says):
    volume = _volume(trained)
    (volume / "a-file").write_text("not a folder\n")
    before = _tree(volume)
    with pytest.raises(Exception, match=says) as caught:
        consolidate(trained, ConsolidationRequest(output))
    assert (caught.value.exit_code, caught.value.reason) == (64, reason)
    assert "--output" in caught.value.message
    assert _tree(volume) == before


def test_an_unwritable_output_exits_64_naming_the_flag_and_publishes_nothing(trained):
    volume = _volume(trained)
    (volume / "a-file").write_text("not a folder\n")
    before = _tree(volume)
    code, result, _ = _cli(trained, "--output", "a-file/merged")
    assert code == 64
    assert result["kind"] == "consolidation" and result["exitCode"] == 64 and "output" not in result
    assert result["message"].startswith("--output: 'a-file/merged'")
    assert _tree(volume) == before


def test_a_run_that_trained_nothing_yet_says_so(trained, tmp_path):
    empty = trained.model_copy(update={"run_dir": str(_volume(trained) / "fresh-run")})
    (_volume(trained) / "fresh-run").mkdir(exist_ok=True)
    code, result, _ = _cli(empty, "--output", "models/never")
    assert (code, result["reason"]) == (64, "NothingToConsolidate")
    assert "no batch has completed" in result["message"] and "train a batch first" in result["message"]
    assert not (_volume(trained) / "models" / "never").exists()


def test_a_quantized_base_is_refused_merge_before_quantizing(trained):
    config_json = Path(str(trained.base_model.path)) / "config.json"
    original = config_json.read_text()
    try:
        data = json.loads(original)
        data["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
        config_json.write_text(json.dumps(data))
        code, result, _ = _cli(trained, "--output", "models/from-quantized")
    finally:
        config_json.write_text(original)
    assert (code, result["reason"]) == (64, "QuantizedBaseModel")
    assert "Merge before quantizing" in result["message"] and "bitsandbytes" in result["message"]
    assert not (_volume(trained) / "models" / "from-quantized").exists()


def test_quantized_tensors_are_refused_even_without_a_quantization_config(tmp_path):
    from safetensors.torch import save_file

    from continual_trainer.consolidate.source import QuantizedBaseError, base_weights

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    save_file(
        {"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 4, dtype=torch.int8)},
        str(tmp_path / "model.safetensors"),
    )
    with pytest.raises(QuantizedBaseError, match="Merge before quantizing"):
        base_weights(tmp_path)


# -- an S3 output: files first, the manifest last (create-only), one folder per consolidation ---------------
def test_an_s3_output_uploads_every_file_and_the_manifest_last(trained, s3_server, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.make_bucket("models")
    store = ObjectStoreClientSpec.model_validate(s3_server.object_store())
    config = trained.model_copy(update={"object_store": store})
    result = consolidate(config, ConsolidationRequest("s3://models/run-a/", max_shard_bytes=SMALL_SHARDS))
    assert result.output is not None and result.output.startswith("s3://models/run-a/")
    assert result.output.endswith("-step00000006/")
    key = result.output.removeprefix(f"s3://{bucket}/")
    client = s3_server.client()
    objects = {o["Key"][len(key) :] for o in client.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]}
    manifest = json.loads(client.get_object(Bucket=bucket, Key=key + "consolidation.json")["Body"].read())
    assert objects == {f["path"] for f in manifest["files"]} | {"consolidation.json"}
    assert len([o for o in objects if o.endswith(".safetensors")]) == result.shards > 1
    for entry in manifest["files"]:
        body = client.get_object(Bucket=bucket, Key=key + entry["path"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
    assert not list(_volume(trained).glob(".consolidation-staging-*"))  # the staging on the volume is gone


def test_the_manifest_write_is_create_only_and_a_missing_bucket_is_refused_before_merging(
    trained, s3_server, monkeypatch, tmp_path
):
    from continual_trainer.consolidate import publish
    from continual_trainer.objectstore import S3Location, make_client

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    store = ObjectStoreClientSpec.model_validate(s3_server.object_store())
    client = make_client(store)
    s3_server.make_bucket("models")
    publish.put_create_only(client, "models", "x/consolidation.json", b"{}")
    with pytest.raises(publish.OutputNotWritableError, match="already exists"):
        publish.put_create_only(client, "models", "x/consolidation.json", b'{"other": 1}')
    assert client.get_object(Bucket="models", Key="x/consolidation.json")["Body"].read() == b"{}"

    # boto3's upload_file wraps the store's error: it is still classified by the store's own code
    (tmp_path / "shard").write_bytes(b"x")
    location = S3Location("no-such-bucket", "p/")
    with pytest.raises(publish.OutputNotWritableError, match="the bucket does not exist"):
        publish.upload_folder(client, tmp_path, location, b"{}")

    monkeypatch.setattr(merge, "merge", lambda _request: pytest.fail("merged before the bucket was reached"))
    config = trained.model_copy(update={"object_store": store})
    with pytest.raises(publish.OutputNotWritableError, match="the bucket does not exist") as caught:
        consolidate(config, ConsolidationRequest("s3://no-such-bucket/models/"))
    assert caught.value.exit_code == 64
    assert not list(_volume(trained).glob(".consolidation-staging-*"))


def test_rslora_rank_and_alpha_patterns_and_modules_to_save_merge_as_peft_applies_them(tiny_model, tmp_path):
    """An adapter built by PEFT itself with every scaling rule the merge implements (no training needed:
    random non-zero B and a perturbed saved module), consolidated and checked against PEFT's forward."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    volume = tmp_path / "volume"
    shutil.copytree(tiny_model, volume / "models" / "tiny")
    model = AutoModelForCausalLM.from_pretrained(str(volume / "models" / "tiny"), dtype=torch.float32)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        rank_pattern={"v_proj": 2},
        alpha_pattern={r"layers\.1\.self_attn\.q_proj": 32},
        target_modules=["q_proj", "v_proj", "down_proj"],
        modules_to_save=["lm_head"],
    )
    peft_model = get_peft_model(model, lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.05)
    adapter = volume / "run" / "adapters" / "step-3"
    peft_model.save_pretrained(str(adapter))
    AutoTokenizer.from_pretrained(str(volume / "models" / "tiny")).save_pretrained(str(adapter))
    (adapter.parent / "latest").symlink_to("step-3")
    config = TrainerConfig.model_validate(
        {
            "runName": "patterns",
            "runDir": str(volume / "run"),
            "dataRoot": str(volume),
            "baseModel": {"path": "models/tiny"},
            "batch": {"id": "unused", "data": {"path": "unused.jsonl"}},
            "terminationMessagePath": None,
        }
    )
    result = consolidate(config, ConsolidationRequest("merged"))
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    manifest = json.loads((volume / "merged" / "consolidation.json").read_text())
    assert manifest["mergedTensors"] == 3 * 2 and manifest["replacedTensors"] == 1  # lm_head, whole
    merged = AutoModelForCausalLM.from_pretrained(str(volume / "merged"))
    saved = peft_model.base_model.model.lm_head.modules_to_save["default"].weight
    assert torch.equal(merged.lm_head.weight, saved)


def test_a_hub_base_model_is_merged_from_its_cached_snapshot_files(tiny_model, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from continual_trainer.config import BaseModelSpec
    from continual_trainer.consolidate.source import base_folder, base_weights

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = base_folder(BaseModelSpec(id="acme/tiny", revision="main"))
    assert folder == repo / "snapshots" / commit
    assert "model.embed_tokens.weight" in base_weights(folder).weight_map


def test_an_adapters_latest_link_out_of_the_run_is_refused(tmp_path):
    from continual_trainer.consolidate.source import latest_adapter

    elsewhere = tmp_path / "elsewhere" / "step-9"
    elsewhere.mkdir(parents=True)
    (elsewhere / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "run" / "adapters").mkdir(parents=True)
    (tmp_path / "run" / "adapters" / "latest").symlink_to(elsewhere)
    with pytest.raises(Exception, match="ln -sfn step-N adapters/latest") as caught:
        latest_adapter(tmp_path / "run")
    assert (caught.value.exit_code, caught.value.reason) == (64, "AdapterLinkDamaged")
