"""The two Dockerfiles, read as text (no Docker engine needed): what each image installs, who it runs as
and what it runs, checked against pyproject.toml, the chart and the operator's Job builder.

A small parser is enough for these files: continuation lines are joined, comments dropped, and each
instruction is split into its keyword and arguments; exec-form (JSON) arguments are decoded.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from continual_operator.workloads import resources

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_DOCKERFILE = ROOT / "Dockerfile"
TRAINER_DOCKERFILE = ROOT / "trainer_image" / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OPERATOR_UID = 65532


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]

    def exec_form(self, keyword: str) -> list[str]:
        value = json.loads(self.last(keyword))
        assert isinstance(value, list), f"{keyword} must use the exec (JSON) form"
        return value

    def pairs(self, keyword: str) -> dict[str, str]:
        """``KEY=value`` pairs of every ENV or LABEL instruction of the stage."""
        out = {}
        for args in self.all(keyword):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                out[key] = value
        return out

    @property
    def run(self) -> str:
        return "\n".join(self.all("RUN"))


@dataclass
class Dockerfile:
    args: dict[str, str]  # global ARGs (before the first FROM) and their defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def resolve(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args[m.group(1)], text)


def parse(path: Path) -> Dockerfile:
    joined = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            base, *alias = rest.split(" AS ") if " AS " in rest else rest.split(" as ")
            stages.append(Stage(base=base.strip(), name=alias[0].strip() if alias else None))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            assert stages, f"{path}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(args=args, stages=stages)


def stage_args(stage: Stage) -> dict[str, str]:
    """The stage's own ARG defaults."""
    return dict(arg.partition("=")[::2] for arg in stage.all("ARG"))


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def copied_sources(dockerfile: Dockerfile) -> list[str]:
    """Every path COPY takes from the build context (not from another stage)."""
    sources = []
    for stage in dockerfile.stages:
        for args in stage.all("COPY"):
            if args.startswith("--from="):
                continue
            *srcs, _ = args.split()
            sources += srcs
    return sources


def script_target(name: str) -> str:
    return PYPROJECT["project"]["scripts"][name]


@pytest.fixture(scope="module")
def operator() -> Dockerfile:
    return parse(OPERATOR_DOCKERFILE)


@pytest.fixture(scope="module")
def trainer() -> Dockerfile:
    return parse(TRAINER_DOCKERFILE)


# -- both images -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [OPERATOR_DOCKERFILE, TRAINER_DOCKERFILE], ids=["operator", "trainer"])
def test_multi_stage_with_a_copied_virtualenv(path: Path) -> None:
    dockerfile = parse(path)
    assert len(dockerfile.stages) == 2
    build, final = dockerfile.stages
    assert build.name == "build"
    assert final.base == build.base, "the virtualenv's interpreter must exist in the final stage"
    assert final.all("COPY") == ["--from=build /opt/venv /opt/venv"]
    assert final.pairs("ENV")["PATH"] == "/opt/venv/bin:$PATH"
    assert "pip install" not in final.run, "installs belong in the build stage"
    assert "--no-cache-dir" in build.run


@pytest.mark.parametrize("path", [OPERATOR_DOCKERFILE, TRAINER_DOCKERFILE], ids=["operator", "trainer"])
def test_oci_labels(path: Path) -> None:
    labels = parse(path).final.pairs("LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]


@pytest.mark.parametrize("path", [OPERATOR_DOCKERFILE, TRAINER_DOCKERFILE], ids=["operator", "trainer"])
def test_build_context_holds_what_is_copied(path: Path) -> None:
    """Every COPY source exists and is not excluded by .dockerignore (which would fail the build)."""
    patterns = dockerignore_patterns()
    for source in copied_sources(parse(path)):
        matches = list(ROOT.glob(source.rstrip("/")))
        if "[" not in source:  # README.m[d] is optional on purpose; everything else must be there
            assert matches, f"COPY {source}: no such file in the repository"
        top = source.rstrip("/").split("/")[0]
        assert not [p for p in patterns if fnmatch.fnmatch(top, p)], f"{source} is in .dockerignore"
    # And what must never be sent to the engine is excluded.
    for heavy in (".venv", ".git", "tests", "**/__pycache__", "**/*.safetensors"):
        assert heavy in patterns


# -- the operator image ------------------------------------------------------------------------------------
def test_operator_image_has_no_torch(operator: Dockerfile) -> None:
    build = operator.stages[0]
    assert operator.resolve(build.base).startswith("python:3.11-slim")
    assert "pip install --no-cache-dir . " in build.run
    assert "[train]" not in build.run
    installs = [cmd for cmd in re.split(r"&&|\n", build.run) if "pip install" in cmd]
    assert installs
    assert not [cmd for cmd in installs if "torch" in cmd]
    assert "! pip show --quiet torch" in build.run  # the build fails if torch sneaks in as a dependency
    assert not [r for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "torch"]


def test_operator_runs_as_the_charts_non_root_user(operator: Dockerfile) -> None:
    assert operator.final.last("USER") == f"{OPERATOR_UID}:{OPERATOR_UID}"
    template = (ROOT / "charts" / "continual-training" / "templates" / "deployment.yaml").read_text()
    assert set(re.findall(r"runAsUser: (\d+)", template)) == {str(OPERATOR_UID)}
    assert operator.final.pairs("ENV")["HOME"] == "/tmp"  # the chart's only writable mount


def test_operator_entrypoint_is_the_console_script(operator: Dockerfile) -> None:
    assert operator.final.exec_form("ENTRYPOINT") == ["continual-training"]
    assert script_target("continual-training") == "continual_operator.cli:run"
    cmd = operator.final.exec_form("CMD")
    assert cmd == ["operator", "--all-namespaces"]
    from continual_operator.cli import build_parser

    parsed = build_parser().parse_args(cmd)
    assert parsed.command == "operator"
    assert parsed.all_namespaces is True


# -- the trainer image -------------------------------------------------------------------------------------
def test_trainer_image_installs_the_train_extra_on_a_pinned_torch(trainer: Dockerfile) -> None:
    build = trainer.stages[0]
    assert trainer.resolve(build.base).startswith("nvidia/cuda:")
    assert '".[train]"' in build.run
    assert "--constraint /opt/torch-constraint.txt" in build.run
    torch_version = stage_args(build)["TORCH_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", torch_version), "pin an exact torch release"
    assert '"torch==${TORCH_VERSION}"' in build.run
    (torch,) = [r for r in PYPROJECT["project"]["optional-dependencies"]["train"] if r.startswith("torch")]
    assert Requirement(torch).specifier.contains(torch_version), f"{torch_version} is outside {torch}"


def test_trainer_runs_as_the_jobs_user(trainer: Dockerfile) -> None:
    uid = resources.TRAINER_UID
    assert trainer.final.last("USER") == f"{uid}:{uid}"
    assert f"--uid {uid} --gid {uid}" in trainer.final.run
    env = trainer.final.pairs("ENV")
    assert env["HF_HOME"] == "/tmp/hf"
    assert env["HOME"] == "/tmp"


def test_trainer_entrypoint_is_what_the_jobs_run(trainer: Dockerfile) -> None:
    entrypoint: list[Any] = trainer.final.exec_form("ENTRYPOINT")
    assert entrypoint == ["continual-trainer"]
    assert script_target("continual-trainer") == "continual_trainer.cli:run"
    assert resources.TRAINER_COMMAND[0] == entrypoint[0]
