"""What an artifact job reads from the trainer config, and where things live in a run's folder.

The snapshot and restore jobs get the same trainer config file the train Job gets, but use only the run's
identity, its folder and the object store settings: :class:`JobConfig` reads exactly those and ignores the
rest, so a config rendered for an artifact job (no batch) and a train Job's config both work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from continual_trainer.config import BaseModelSpec, ObjectStoreClientSpec
from continual_trainer.identity import RunIdentity


class JobConfig(BaseModel):
    """The trainer config's fields an artifact job uses (camelCase on the wire; other keys are ignored)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    run_name: str
    run_namespace: str | None = None
    run_uid: str | None = None
    run_dir: str
    data_root: str | None = None
    #: Where the new run's base model is: a restore records it as the run's model place (see restore.py).
    base_model: BaseModelSpec | None = None
    object_store: ObjectStoreClientSpec | None = None
    termination_message_path: str | None = "/dev/termination-log"

    @property
    def run(self) -> RunIdentity:
        """The run the config names (the owner a restored folder is given)."""
        return RunIdentity(namespace=self.run_namespace, name=self.run_name, uid=self.run_uid)

    def base_model_folder(self) -> Path | None:
        """The new run's on-volume base model folder, absolute (None: a hub model, or not given)."""
        if self.base_model is None or self.base_model.path is None:
            return None
        path = Path(self.base_model.path)
        return (path if path.is_absolute() else Path(self.data_root or self.run_dir) / path).resolve()


def parse_job_config(text: str) -> JobConfig:
    """Parse the YAML/JSON trainer config (pydantic errors propagate: the CLI names the field)."""
    import yaml

    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise TypeError("the trainer config must be a mapping (YAML or JSON object)")
    return JobConfig.model_validate(data)


@dataclass(frozen=True)
class Layout:
    """The run folder's entries a snapshot carries: the same names as ``continual_trainer.train.RunLayout``.

    Not imported from train.py, which pulls in the training stack's modules; tests/trainer/test_snapshot.py
    checks that both agree.
    """

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger"

    @property
    def history_file(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def restore_staging(self) -> Path:
        """Where a restore downloads and verifies before anything moves into place (on the same volume)."""
        return self.root / ".restore-staging"

    @property
    def restore_marker(self) -> Path:
        """Present while verified files are being moved into place (an interrupted restore is redone)."""
        return self.root / ".restoring.json"
