"""deploy/: the Kubernetes manifests render, are valid objects of the Kubernetes version we
pin, and say what the services need, checked against the services' own settings code.

Each overlay is rendered with ``kubectl kustomize`` (the Debian image of the project's
machines ships kubectl); where kubectl is missing the overlays are skipped and the base's
files are checked as they are written. Every object is validated offline with the schemas
``kubernetes-validate`` ships. Then, per Deployment: probes on the health service, resource
limits, no root, and its environment, resolved as the kubelet resolves it (ConfigMap,
Secret keys, ``$(VAR)`` references), read by the service's real settings functions: every
variable a pod needs is there, and no address left at its loopback default.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from edge.settings import UPSTREAM_NAMES, EdgeSettings
from location.settings import LocationSettings
from notification.settings import NotificationSettings
from rider.settings import PaymentSettings
from rideshare.grpc_server import LIVENESS_SERVICE_NAME
from rideshare.infra_users import NATS_USERS, VALKEY_USERS
from rideshare.settings import (
    MIN_SECRET_LEN,
    SERVICE_PORTS,
    ServiceSettings,
    SettingsError,
    service_port,
    service_settings,
)
from trip.settings import TripSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
KUBERNETES_VERSION = "1.32.0"
OVERLAYS = ("small", "large")
SERVICES = (*SERVICE_PORTS, "edge")
PLACEHOLDER = "REPLACE_ME"
POD_UID = 10001
KUBECTL = shutil.which("kubectl")

Obj = dict[str, Any]


# --- rendering ----------------------------------------------------------------------------


def kustomize(directory: Path) -> list[Obj]:
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def base_as_written() -> list[Obj]:
    """The base's resources, read without kustomize (where kubectl is missing)."""
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((K8S / "base" / name).read_text())
        if doc
    ]


def render(which: str) -> list[Obj]:
    if which == "base-files":
        return base_as_written()
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: the base's files are checked as written")
    return copy.deepcopy(_kustomized(which))


@functools.cache
def _kustomized(overlay: str) -> list[Obj]:
    return kustomize(K8S / "overlays" / overlay)


@pytest.fixture(scope="module", params=[*OVERLAYS, "base-files"])
def rendered(request: pytest.FixtureRequest) -> list[Obj]:
    return render(request.param)


def of_kind(objects: Sequence[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    found: Obj = containers[0]
    return found


# --- the environment a pod gets -----------------------------------------------------------

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def secret_values(objects: Sequence[Obj], *, real: bool) -> dict[tuple[str, str], str]:
    """(secret, key) -> value; with ``real``, each placeholder swapped for a usable value."""
    values: dict[tuple[str, str], str] = {}
    for name, secret in of_kind(objects, "Secret").items():
        for key, value in secret.get("stringData", {}).items():
            values[name, key] = (f"{name}-{key}-" + "x" * MIN_SECRET_LEN) if real else value
    return values


def pod_env(
    objects: Sequence[Obj], deployment: Obj, *, real_secrets: bool = True
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first, then env in
    order, each ``$(VAR)`` replaced by a variable defined before it."""
    configs = of_kind(objects, "ConfigMap")
    secrets = secret_values(objects, real=real_secrets)
    spec = container(deployment)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        env.update(configs[source["configMapRef"]["name"]]["data"])
    for var in spec.get("env", []):
        if "value" in var:
            env[var["name"]] = _REFERENCE.sub(lambda m: env.get(m[1], m[0]), var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"], ref["key"]]
    return env


def secret_refs(deployment: Obj) -> set[tuple[str, str]]:
    return {
        (var["valueFrom"]["secretKeyRef"]["name"], var["valueFrom"]["secretKeyRef"]["key"])
        for var in container(deployment).get("env", [])
        if "valueFrom" in var
    }


@dataclass(frozen=True)
class Read:
    """What a service's settings code made of a pod's environment."""

    shared: ServiceSettings | None  # None for the edge
    addresses: Mapping[str, str]  # setting -> the address of another service it calls
    urls: Sequence[str]


def read_settings(name: str, env: Mapping[str, str]) -> Read:
    if name == "edge":
        edge = EdgeSettings.from_env(env)
        return Read(None, dict(edge.upstreams), _urls(edge.infra.redis_url, edge.infra))
    shared = service_settings(name, env=env)
    addresses: dict[str, str] = {}
    if name == "trip":
        addresses["location"] = TripSettings.from_env(env).location_addr
    if name == "location":
        location = LocationSettings.from_env(env)
        addresses |= {"driver": location.driver_addr, "trip": location.trip_addr}
    if name == "notification":
        NotificationSettings.from_env(env)
    if name == "rider":
        PaymentSettings.from_env(shared.infra.stripe_api_base, env)
    return Read(shared, addresses, _urls(shared.infra.redis_url, shared.infra))


def _urls(redis_url: str, infra: Any) -> list[str]:
    return [redis_url, infra.postgres_dsn, infra.nats_url]


# --- every object -------------------------------------------------------------------------


def test_every_object_is_valid_for_the_pinned_kubernetes_version(rendered: list[Obj]) -> None:
    assert rendered
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")


def test_each_service_has_a_deployment_and_a_service(rendered: list[Obj]) -> None:
    assert set(of_kind(rendered, "Deployment")) == set(SERVICES)
    services = of_kind(rendered, "Service")
    assert set(services) == set(SERVICES)
    for name in SERVICE_PORTS:
        # Headless, so round_robin clients see every copy (dns:///<name>:<port>).
        assert services[name]["spec"]["clusterIP"] == "None", name
        ports = {p["port"] for p in services[name]["spec"]["ports"]}
        assert service_port(name, {}) in ports, name
    assert set(of_kind(rendered, "PodDisruptionBudget")) == set(SERVICES)


def test_every_deployment_runs_its_service_from_the_one_image(rendered: list[Obj]) -> None:
    for name, deployment in of_kind(rendered, "Deployment").items():
        spec = container(deployment)
        assert spec["command"] == ["python", "-m", name]
        image, _, tag = spec["image"].rpartition("/")[2].partition(":")
        assert image == "rideshare", spec["image"]
        assert tag != "latest", spec["image"]


def test_every_deployment_has_probes_on_the_health_service(rendered: list[Obj]) -> None:
    for name, deployment in of_kind(rendered, "Deployment").items():
        spec = container(deployment)
        ready, alive, startup = (
            spec["readinessProbe"],
            spec["livenessProbe"],
            spec["startupProbe"],
        )
        if name == "edge":
            assert ready["httpGet"]["path"] == "/healthz"
            assert alive["httpGet"]["path"] == startup["httpGet"]["path"] != "/healthz"
            continue
        port = service_port(name, {})
        # Ready: the whole server SERVING (its stores answer); alive: it answers at all.
        assert ready["grpc"] == {"port": port}, name
        assert alive["grpc"] == {"port": port, "service": LIVENESS_SERVICE_NAME}, name
        assert startup["grpc"] == alive["grpc"], name
        ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
        assert ports == {"grpc": port, "metrics": SERVICE_PORTS[name][1]}, name


def test_every_deployment_has_resource_requests_and_limits(rendered: list[Obj]) -> None:
    for name, deployment in of_kind(rendered, "Deployment").items():
        resources = container(deployment)["resources"]
        for bound in ("requests", "limits"):
            assert set(resources[bound]) == {"cpu", "memory"}, (name, bound)


def test_no_container_runs_as_root(rendered: list[Obj]) -> None:
    for name, deployment in of_kind(rendered, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == POD_UID, name
        assert pod["automountServiceAccountToken"] is False, name
        spec = container(deployment)
        assert spec["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        assert "runAsUser" not in spec["securityContext"], name


def test_only_the_projects_pods_reach_the_grpc_ports(rendered: list[Obj]) -> None:
    policy = of_kind(rendered, "NetworkPolicy")["rideshare-grpc"]["spec"]
    assert policy["podSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/name", "operator": "In", "values": list(SERVICE_PORTS)}
    ]
    (grpc_rule,) = (rule for rule in policy["ingress"] if rule["ports"] == [{"port": "grpc"}])
    (callers,) = grpc_rule["from"]
    assert set(callers["podSelector"]["matchExpressions"][0]["values"]) == set(SERVICES)
    assert "namespaceSelector" not in callers


def test_the_autoscaled_deployments_leave_their_count_to_the_autoscaler(
    rendered: list[Obj],
) -> None:
    scalers = of_kind(rendered, "HorizontalPodAutoscaler")
    assert set(scalers) == {"edge", "location"}
    deployments = of_kind(rendered, "Deployment")
    for name, hpa in scalers.items():
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "replicas" not in deployments[name]["spec"], name


# --- what the services read ---------------------------------------------------------------


def test_every_service_reads_a_whole_configuration_from_its_pod(
    rendered: list[Obj], tmp_path: Path
) -> None:
    for name, deployment in of_kind(rendered, "Deployment").items():
        env = pod_env(rendered, deployment)
        # A variable missing would send the settings to files in the data directory.
        env["RIDESHARE_DATA_DIR"] = str(tmp_path)
        read = read_settings(name, env)
        assert list(tmp_path.iterdir()) == [], f"{name} fell back to the data directory"
        for url in read.urls:
            assert "$(" not in url, f"{name}: unresolved reference in {url}"
        if read.shared is not None:
            assert read.shared.host == "0.0.0.0", name
            assert read.shared.grpc_port == service_port(name, {}), name
            assert read.shared.internal_secret == env["RIDESHARE_INTERNAL_SECRET"]
        else:
            assert env["RIDESHARE_EDGE_HOST"] == "0.0.0.0"
            assert set(read.addresses) == set(UPSTREAM_NAMES)
        for target, address in read.addresses.items():
            assert address == f"dns:///{target}:{service_port(target, {})}", (name, target)


def test_each_service_logs_in_as_itself_with_only_its_own_passwords(
    rendered: list[Obj],
) -> None:
    for name, deployment in of_kind(rendered, "Deployment").items():
        env = pod_env(rendered, deployment)
        refs = secret_refs(deployment)
        assert ("rideshare-nats", name) in refs, name
        assert {key for secret, key in refs if secret == "rideshare-nats"} == {name}
        assert {key for secret, key in refs if secret == "rideshare-valkey"} == (
            {name} if name in VALKEY_USERS else set()
        ), name
        assert (("rideshare-jwt", "secret") in refs) == (name == "edge")
        assert (("rideshare-stripe", "api-key") in refs) == (name == "rider")
        assert ("rideshare-postgres", "password") in refs or name in ("location", "edge")
        assert env["RIDESHARE_NATS_URL"].startswith(f"nats://{name}:")
        if name in VALKEY_USERS:
            assert f"://{name}:" in env["RIDESHARE_REDIS_URL"]
        assert "target_session_attrs=read-write" in env["RIDESHARE_POSTGRES_DSN"]


def test_the_secrets_hold_a_password_for_every_store_user(rendered: list[Obj]) -> None:
    secrets = of_kind(rendered, "Secret")
    assert set(secrets["rideshare-nats"]["stringData"]) == set(NATS_USERS)
    assert set(secrets["rideshare-valkey"]["stringData"]) == set(VALKEY_USERS)


def test_the_shipped_secrets_are_placeholders_the_services_refuse(
    rendered: list[Obj], tmp_path: Path
) -> None:
    for (secret, key), value in secret_values(rendered, real=False).items():
        assert value == PLACEHOLDER or (secret, key) == ("rideshare-postgres", "user")
    deployments = of_kind(rendered, "Deployment")
    for name in ("trip", "edge"):
        env = pod_env(rendered, deployments[name], real_secrets=False)
        env["RIDESHARE_DATA_DIR"] = str(tmp_path)
        with pytest.raises(SettingsError, match="at least 32"):
            read_settings(name, env)


def test_per_process_counts_follow_the_cpu_limit(rendered: list[Obj]) -> None:
    # Their defaults count the node's cores, which a container's CPU limit does not narrow.
    for name, variable in (
        ("edge", "RIDESHARE_EDGE_WORKERS"),
        ("rider", "RIDESHARE_KDF_CONCURRENCY"),
        ("driver", "RIDESHARE_KDF_CONCURRENCY"),
    ):
        deployment = of_kind(rendered, "Deployment")[name]
        limit = container(deployment)["resources"]["limits"]["cpu"]
        assert pod_env(rendered, deployment)[variable] == str(limit), name


def known_variables() -> set[str]:
    """Every RIDESHARE_* name the code reads, or docs/DEPLOY.md documents."""
    sources = [
        path for package in ("rideshare", *SERVICES) for path in (ROOT / package).rglob("*.py")
    ]
    found = {
        name
        for path in [*sources, ROOT / "docs" / "DEPLOY.md"]
        for name in re.findall(r"RIDESHARE_[A-Z0-9_]*[A-Z0-9]", path.read_text(encoding="utf-8"))
    }
    for service in SERVICES:  # names built with f-strings
        upper = service.upper()
        found |= {f"RIDESHARE_{upper}_PORT", f"RIDESHARE_{upper}_METRICS_PORT"}
        found.add(f"RIDESHARE_{upper}_ADDR")
    return found


def test_every_variable_the_manifests_set_is_one_the_project_knows(rendered: list[Obj]) -> None:
    known = known_variables()
    for deployment in of_kind(rendered, "Deployment").values():
        unknown = {v for v in pod_env(rendered, deployment) if v.startswith("RIDESHARE_")} - known
        assert not unknown, f"{deployment['metadata']['name']} sets unknown {sorted(unknown)}"


# --- the overlays ---------------------------------------------------------------------------


def overlay(name: str) -> list[Obj]:
    return render(name)


def replicas(objects: Sequence[Obj]) -> dict[str, int]:
    """Deployment -> its fixed count, or the autoscaler's minimum."""
    counts = {
        name: d["spec"]["replicas"]
        for name, d in of_kind(objects, "Deployment").items()
        if "replicas" in d["spec"]
    }
    for name, hpa in of_kind(objects, "HorizontalPodAutoscaler").items():
        counts[name] = hpa["spec"]["minReplicas"]
    return counts


def test_the_small_overlay_runs_one_or_two_copies_on_single_node_stores() -> None:
    objects = overlay("small")
    assert set(replicas(objects).values()) <= {1, 2}
    config = of_kind(objects, "ConfigMap")["rideshare-config"]["data"]
    assert config["RIDESHARE_JETSTREAM_REPLICAS"] == "1"
    assert "," not in config["NATS_SERVERS"]


def test_the_large_overlay_runs_every_service_in_several_copies_on_clustered_stores() -> None:
    objects = overlay("large")
    counts = replicas(objects)
    assert set(counts) == set(SERVICES)
    assert min(counts.values()) >= 3
    config = of_kind(objects, "ConfigMap")["rideshare-config"]["data"]
    assert config["RIDESHARE_JETSTREAM_REPLICAS"] == "3"
    assert len(config["NATS_SERVERS"].split(",")) == 3
    assert config["VALKEY_SCHEME"] == "redis+cluster"
    assert len(config["POSTGRES_HOSTS"].split(",")) == 2


def test_every_overlay_puts_everything_in_one_namespace_with_a_pinned_image() -> None:
    for name in OVERLAYS:
        objects = overlay(name)
        assert {o["metadata"].get("namespace") for o in objects} == {"rideshare"}
        for deployment in of_kind(objects, "Deployment").values():
            assert re.fullmatch(r".+/rideshare:\d+\.\d+\.\d+", container(deployment)["image"])


# --- the image -----------------------------------------------------------------------------


def containerfile_lines() -> Iterator[str]:
    for line in CONTAINERFILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            yield line.strip()


def test_the_image_runs_as_the_pods_user_and_exposes_every_port() -> None:
    lines = list(containerfile_lines())
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] == str(POD_UID)
    exposed = " ".join(line.removeprefix("EXPOSE ") for line in lines if line.startswith("EXPOSE"))
    for name in SERVICES:
        assert str(service_port(name, {})) in exposed.split(), name
    for _, metrics in SERVICE_PORTS.values():
        assert str(metrics) in exposed.split()
