"""The deployment files name only what exists in the code.

Every ``python -m <module>`` command in compose and the rendered manifests imports (and a
``recsys.cli`` command parses), and every ``RECSYS_*`` variable handed to a container is a
field of the settings object of the program that container runs, with a value that the
settings accept. Paths in settings point into a mounted volume (the root filesystem is
read-only), and probes hit the ports the settings open.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from recsys.cli import build_parser
from recsys.data.movielens import DataSettings
from recsys.settings import KafkaSettings
from tests.deploy.manifests import (
    OVERLAYS,
    Container,
    compose_containers,
    k8s_containers,
    render_overlay,
)

# The programs that recsys.cli subcommands run, by (command, subcommand): their settings.
CLI_SETTINGS: dict[tuple[str, str], list[type[BaseSettings]]] = {
    ("topics", "create"): [KafkaSettings],
    ("publish", "movielens"): [KafkaSettings, DataSettings],
    ("publish", "event"): [KafkaSettings],
}
# The project image; containers of other images (Kafka, Qdrant) are not checked.
PROJECT_IMAGE = "recsys-realtime"


def _containers() -> list[Container]:
    found = list(compose_containers())
    try:
        for overlay in OVERLAYS:
            found += k8s_containers(overlay, render_overlay(overlay))
    except pytest.fail.Exception:
        # kubectl missing or a broken overlay: collect the rest; the test below fails.
        pass
    return found


def _is_project(container: Container) -> bool:
    """Runs the project image (any tag, any registry, the -gpu variant included)."""
    image = str(container.spec.get("image", ""))
    return PurePosixPath(image.split(":")[0]).name.startswith(PROJECT_IMAGE)


CONTAINERS = [c for c in _containers() if _is_project(c)]


def _ids(container: Container) -> str:
    return container.where


def test_every_project_container_is_checked() -> None:
    """Every recsys container runs `python -m ...`; there is one of each service."""
    for overlay in OVERLAYS:
        render_overlay(overlay)  # fails with the reason if the manifests did not render
    modules = {c.python_module for c in CONTAINERS}
    for container in CONTAINERS:
        assert container.python_module, f"{container.where}: no `python -m` command"
    expected = {f"services.{s}" for s in ("feature", "inference", "indexer", "ranking", "trainer")}
    assert expected <= modules


def _service_settings(module: str) -> type[BaseSettings]:
    """The settings object of ``services.<name>``: the class with prefix RECSYS_<NAME>_."""
    package = module.removesuffix(".__main__")
    settings_module = importlib.import_module(f"{package}.settings")
    prefix = f"RECSYS_{package.rsplit('.', 1)[1].upper()}_"
    classes = [
        cls
        for _, cls in inspect.getmembers(settings_module, inspect.isclass)
        if issubclass(cls, BaseSettings)
        and cls.__module__ == settings_module.__name__
        and cls.model_config.get("env_prefix") == prefix
    ]
    assert len(classes) == 1, f"{package}.settings: settings classes {classes}"
    return classes[0]


def settings_for(container: Container) -> list[type[BaseSettings]]:
    module = container.python_module
    assert module is not None
    if module.startswith("services."):
        return [_service_settings(module)]
    if module == "recsys.cli":
        key = tuple(container.module_args[:2])
        assert key in CLI_SETTINGS, f"{container.where}: add {key} to CLI_SETTINGS"
        return CLI_SETTINGS[key]  # type: ignore[index]
    raise AssertionError(f"{container.where}: unknown program {module!r}; map its settings")


def env_fields(cls: type[BaseSettings]) -> dict[str, Any]:
    """Every environment variable ``cls`` reads, with the annotation of its field.

    A nested settings group reads its own prefix (it is built by its default_factory);
    a nested plain model is read through ``env_nested_delimiter`` when the class has one.
    """
    prefix = str(cls.model_config.get("env_prefix", ""))
    delimiter = cls.model_config.get("env_nested_delimiter")
    names: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            names |= env_fields(annotation)
            continue
        names[f"{prefix}{name}".upper()] = annotation
        if delimiter and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub, sub_info in annotation.model_fields.items():
                names[f"{prefix}{name}{delimiter}{sub}".upper()] = sub_info.annotation
    return names


def _recsys_env(container: Container) -> dict[str, str]:
    return {k: v for k, v in container.env.items() if k.startswith("RECSYS_")}


@pytest.mark.parametrize("container", CONTAINERS, ids=_ids)
def test_command_exists(container: Container) -> None:
    module = container.python_module
    assert module is not None, f"{container.where}: not a `python -m` command"
    # `python -m package` runs package.__main__.
    target = module
    spec = importlib.util.find_spec(target)
    assert spec is not None, f"{container.where}: no module {module}"
    if spec.submodule_search_locations is not None:
        target = f"{module}.__main__"
        assert importlib.util.find_spec(target) is not None, f"{container.where}: {target}"
    importlib.import_module(target)
    if module == "recsys.cli":
        build_parser().parse_args(container.module_args)


@pytest.mark.parametrize("container", CONTAINERS, ids=_ids)
def test_environment_is_read_by_the_program(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    classes = settings_for(container)
    known: dict[str, Any] = {}
    for cls in classes:
        known |= env_fields(cls)
    env = _recsys_env(container)
    unknown = sorted(set(env) - set(known))
    assert not unknown, (
        f"{container.where}: {unknown} are read by none of "
        f"{[c.__name__ for c in classes]} (settings fields: {sorted(known)})"
    )
    # And the values parse: instantiate with exactly this environment.
    for name in [k for k in os.environ if k.startswith("RECSYS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for cls in classes:
        cls()  # raises if a value does not parse (e.g. a port that is not a number)


def _k8s_containers() -> Iterator[Container]:
    for container in CONTAINERS:
        if container.pod:
            yield container


K8S_CONTAINERS = list(_k8s_containers())


def _path_settings(container: Container) -> dict[str, str]:
    known: dict[str, Any] = {}
    for cls in settings_for(container):
        known |= env_fields(cls)
    return {k: v for k, v in _recsys_env(container).items() if known.get(k) is Path}


@pytest.mark.parametrize("container", K8S_CONTAINERS, ids=_ids)
def test_pod_hardening_and_writable_paths(container: Container) -> None:
    pod, spec = container.pod, container.spec
    assert pod.get("enableServiceLinks") is False, (
        f"{container.where}: service links would inject e.g. RECSYS_RANKING_PORT=tcp://..."
    )
    assert pod.get("automountServiceAccountToken") is False, container.where
    assert pod["securityContext"]["runAsNonRoot"] is True, container.where
    security = spec["securityContext"]
    assert security["readOnlyRootFilesystem"] is True, container.where
    assert security["allowPrivilegeEscalation"] is False, container.where
    assert security["capabilities"]["drop"] == ["ALL"], container.where
    assert "limits" in spec["resources"] and "requests" in spec["resources"], container.where
    mounts = {m["mountPath"]: m for m in spec.get("volumeMounts", [])}
    assert "/tmp" in mounts, f"{container.where}: needs a writable /tmp"
    # Relative defaults (.data/...) would land on the read-only root: every path setting
    # is set, and it lies in a mounted volume.
    for name, value in _path_settings(container).items():
        path = PurePosixPath(value)
        assert path.is_absolute(), f"{container.where}: {name}={value} must be absolute"
        assert any(path == PurePosixPath(m) or PurePosixPath(m) in path.parents for m in mounts), (
            f"{container.where}: {name}={value} is not on a mounted volume"
        )


@pytest.mark.parametrize("container", K8S_CONTAINERS, ids=_ids)
def test_probes_use_the_ports_the_settings_open(container: Container) -> None:
    spec = container.spec
    ports = {p["name"]: p["containerPort"] for p in spec.get("ports", [])}
    env = _recsys_env(container)
    module = container.python_module or ""
    probes = [spec[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in spec]
    if module.startswith("services."):
        assert {"livenessProbe", "readinessProbe"} <= set(spec), container.where
    for probe in probes:
        if "httpGet" in probe:
            port = probe["httpGet"]["port"]
            port = ports.get(port, port)
            assert str(port) == env.get("RECSYS_OBS_HTTP_PORT"), container.where
            assert probe["httpGet"]["path"] in ("/healthz", "/readyz"), container.where
        if "grpc" in probe:
            from recsys.v1 import ranking_pb2
            from services.ranking.settings import RankingSettings

            grpc_port = int(env.get("RECSYS_RANKING_PORT", RankingSettings().port))
            assert probe["grpc"]["port"] == grpc_port, container.where
            service_name = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name
            assert probe["grpc"].get("service", "") in ("", service_name), container.where
    if module == "services.ranking":
        readiness = spec["readinessProbe"]["grpc"]
        assert readiness["service"] == "recsys.v1.RankingService", container.where
