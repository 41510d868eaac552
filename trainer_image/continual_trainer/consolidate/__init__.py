"""Consolidation: merge the run's latest adapter into its base model, check it, publish a deployable folder.

``python -m continual_trainer.consolidate --config FILE --output PATH_OR_S3_URI [--dtype ...]`` (see
``__main__``) turns ``adapters/latest`` into a Hugging Face model folder that any serving stack loads with
plain ``AutoModelForCausalLM.from_pretrained`` (no PEFT). The modules, in the order a job uses them:

* :mod:`.result` -- the job's result record (no torch: the operator and local mode parse it);
* :mod:`.source` -- what is merged: the adapter, the base model's safetensors shards, refusals
  (no adapter yet, a quantized base, weights that are not safetensors);
* :mod:`.merge` -- the merge itself, in fp32 from the base's original weights, shard by shard;
* :mod:`.check` -- the merged model's logits against base + adapter through PEFT, before anything counts;
* :mod:`.publish` -- the manifest and model card, and the atomic publish (volume folder or S3 prefix);
* :mod:`.job` -- one consolidation from a trainer config: lock, locate, merge, check, publish.

This ``__init__`` imports nothing heavy, so that :mod:`.result` can be imported without torch.
"""
