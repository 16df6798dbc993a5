"""Rendering and reading of the deployment files, shared by the tests in this folder."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
# Optional kustomize components, each rendered on top of the overlay named here.
COMPONENTS = {"keda-feature": "prod"}
COMPOSE_FILES = (ROOT / "docker-compose.yml", ROOT / "docker-compose.gpu.yml")

Manifest = dict[str, Any]
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def kubectl() -> str:
    """The kubectl binary; its absence fails the test (kustomize rendering is required)."""
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl not found on PATH: the deployment checks render deploy/k8s with "
            "`kubectl kustomize` (kubectl >= 1.27 with kustomize v5). Install kubectl; "
            "these checks are not optional.",
            pytrace=False,
        )
    return path


def _kustomize(directory: Path) -> list[Manifest]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{result.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def render_overlay(name: str) -> tuple[Manifest, ...]:
    return tuple(_kustomize(K8S / "overlays" / name))


@functools.cache
def render_component(name: str, tmp_root: Path) -> tuple[Manifest, ...]:
    """The component on top of its overlay, through a scratch kustomization."""
    folder = tmp_root / f"with-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # Relative: kustomize takes no absolute paths for directories.
                "resources": [os.path.relpath(K8S / "overlays" / COMPONENTS[name], folder)],
                "components": [os.path.relpath(K8S / "components" / name, folder)],
            }
        )
    )
    return tuple(_kustomize(folder))


def by_kind(docs: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc.get("kind") == kind]


def find(docs: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    for doc in by_kind(docs, kind):
        if doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} named {name!r}")


# --- containers and their environment ------------------------------------------------


@dataclass
class Container:
    """One container of a rendered workload, or one service of a compose file."""

    where: str  # e.g. "dev Deployment/recsys-ranking[ranking]" or "compose ranking"
    command: list[str]
    env: dict[str, str]
    spec: Mapping[str, Any] = field(default_factory=dict)
    pod: Mapping[str, Any] = field(default_factory=dict)

    @property
    def python_module(self) -> str | None:
        """``X`` of ``python -m X``, or None for a command that is not one."""
        cmd = self.command
        if len(cmd) >= 3 and Path(cmd[0]).name.startswith("python") and cmd[1] == "-m":
            return cmd[2]
        return None

    @property
    def module_args(self) -> list[str]:
        return self.command[3:]


SECRET_PLACEHOLDER = "secret-value"


def pod_spec(doc: Manifest) -> Mapping[str, Any] | None:
    if doc.get("kind") not in POD_TEMPLATE_KINDS:
        return None
    spec: Mapping[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def k8s_containers(label: str, docs: tuple[Manifest, ...]) -> Iterator[Container]:
    """Every container (init containers included) with its environment resolved."""
    config_maps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in by_kind(docs, "ConfigMap")}
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}

    def secret_keys(name: str) -> dict[str, str]:
        secret = secrets.get(name, {})
        keys = {**secret.get("data", {}), **secret.get("stringData", {})}
        return dict.fromkeys(keys, SECRET_PLACEHOLDER)

    for doc in docs:
        pod = pod_spec(doc)
        if pod is None:
            continue
        for spec in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            where = f"{label} {doc['kind']}/{doc['metadata']['name']}[{spec['name']}]"
            env: dict[str, str] = {}
            for source in spec.get("envFrom", []):
                prefix = source.get("prefix", "")
                if "configMapRef" in source:
                    ref = source["configMapRef"]
                    data = config_maps.get(ref["name"])
                    assert data is not None or ref.get("optional"), (
                        f"{where}: envFrom names ConfigMap {ref['name']!r}, not rendered"
                    )
                    env |= {prefix + k: str(v) for k, v in (data or {}).items()}
                elif "secretRef" in source:
                    env |= {
                        prefix + k: v for k, v in secret_keys(source["secretRef"]["name"]).items()
                    }
            for var in spec.get("env", []):
                if "value" in var:
                    env[var["name"]] = str(var["value"])
                elif "configMapKeyRef" in var.get("valueFrom", {}):
                    ref = var["valueFrom"]["configMapKeyRef"]
                    env[var["name"]] = str(config_maps.get(ref["name"], {}).get(ref["key"], ""))
                else:  # secretKeyRef, fieldRef, resourceFieldRef: the value is not known here
                    env[var["name"]] = SECRET_PLACEHOLDER
            yield Container(
                where=where,
                command=[*spec.get("command", []), *spec.get("args", [])],
                env=env,
                spec=spec,
                pod=pod,
            )


# --- compose ---------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+]([^}]*))?\}")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the variables unset: the default (or empty)."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def compose_containers() -> Iterator[Container]:
    """Every service of the compose files; an override file inherits the base's command."""
    base_services: dict[str, Any] = {}
    for path in COMPOSE_FILES:
        services: dict[str, Any] = load_yaml(path).get("services", {})
        for name, service in services.items():
            base = base_services.get(name, {})
            command = service.get("command", base.get("command", []))
            if isinstance(command, str):
                command = command.split()
            environment = service.get("environment", {})
            if isinstance(environment, list):
                environment = dict(item.split("=", 1) for item in environment)
            env = {k: interpolate(str(v)) for k, v in environment.items() if v is not None}
            image = interpolate(str(service.get("image", base.get("image", ""))))
            yield Container(
                where=f"{path.name} service {name}",
                command=command,
                env=env,
                spec={"image": image},
            )
            base_services.setdefault(name, service)
