"""Tests of the rendered Kubernetes overlays: each region's overlay pins only its own
region's nodes, queues, Secret and store; no secret value is committed; the configs in
the ConfigMaps load with the Secrets' variables set. Run by scripts/check-k8s.sh."""

import os
import pathlib
import re
import subprocess
import tempfile
import tomllib
import unittest

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
REGIONS = {"eu": "eu-central-1", "ca": "ca-central-1", "sg": "ap-southeast-1"}
# limits.job_timeout_seconds and the memory bound of docs/limits.md, "How memory is bounded".
JOB_TIMEOUT_SECONDS = 300
WORKER_MEMORY_MIB = 30 + 1024 + 16 * 15 + 64


def render(overlay):
    text = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "k8s" / overlay)],
        check=True, capture_output=True, text=True,
    ).stdout
    return text, [d for d in yaml.safe_load_all(text) if d]


def one(documents, kind):
    found = [d for d in documents if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def mebibytes(quantity):
    units = {"Mi": 1, "Gi": 1024}
    return int(quantity[:-2]) * units[quantity[-2:]]


def dummy_secret(key):
    """A value of the right shape for each key a Secret of k8s/README.md holds."""
    if key.endswith("amqp-url") or key == "amqp-scaler-url":
        return "amqp://user:password@broker.invalid:5672/vhost"
    if key == "database-url":
        return "postgres://user:password@db.invalid:5432/locality"
    if key == "receipt-key" or key.endswith("message-key"):
        return os.urandom(32).hex()
    if key in ("download-key", "pseudonymisation-key"):
        return os.urandom(24).hex()
    return "dummy-" + key


def loads_with_secrets(test, documents, config_map):
    """Runs `locality print-config` on the ConfigMap's file with the Deployment's env."""
    deployment = one(documents, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = dict(os.environ)
    for variable in container["env"]:
        if "valueFrom" in variable:
            env[variable["name"]] = dummy_secret(variable["valueFrom"]["secretKeyRef"]["key"])
        else:
            env[variable["name"]] = variable["value"]
    config = one([d for d in documents if d["kind"] == "ConfigMap"], "ConfigMap")
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory) / "locality.toml"
        path.write_text(config["data"]["locality.toml"])
        binary = os.environ.get("LOCALITY_BIN", str(ROOT / "target/debug/locality"))
        result = subprocess.run(
            [binary, "--config", str(path), "print-config"],
            env=env, capture_output=True, text=True,
        )
    test.assertEqual(result.returncode, 0, f"{config_map}: {result.stderr}")
    return tomllib.loads(result.stdout)


class ProbesApart:
    def assert_probes_on_the_admin_listener(self, container, template):
        """Probes and scrapes reach --admin-listen, not the port clients can flood."""
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        self.assertIn("admin", ports)
        self.assertNotEqual(ports["admin"], ports["http"])
        self.assertIn(f"--admin-listen=0.0.0.0:{ports['admin']}", container["args"])
        for probe in ("readinessProbe", "livenessProbe"):
            self.assertEqual(container[probe]["httpGet"]["port"], "admin", probe)
        annotations = template["metadata"]["annotations"]
        self.assertEqual(annotations["prometheus.io/port"], str(ports["admin"]))


class EachRegionOverlayPinsOnlyItsOwnRegion(unittest.TestCase, ProbesApart):
    def test_nodes_queues_secret_and_store_are_its_regions_only(self):
        for region, nodes in REGIONS.items():
            with self.subTest(region=region):
                text, documents = render(f"overlays/{region}")
                spec = one(documents, "Deployment")["spec"]["template"]["spec"]
                terms = spec["affinity"]["nodeAffinity"][
                    "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                self.assertEqual(terms, [{"matchExpressions": [{
                    "key": "topology.kubernetes.io/region", "operator": "In", "values": [nodes]}]}])
                container = spec["containers"][0]
                self.assertIn(f"--region={region}", container["args"])
                secrets = {v["valueFrom"]["secretKeyRef"]["name"]
                           for v in container["env"] if "valueFrom" in v}
                self.assertEqual(secrets, {f"locality-{region}"})
                for variable in container["env"]:
                    if variable["name"].startswith("LOCALITY__REGIONS__"):
                        self.assertTrue(variable["name"].startswith(
                            f"LOCALITY__REGIONS__{region.upper()}__"), variable["name"])
                scaled = one(documents, "ScaledObject")["spec"]
                self.assertEqual(
                    sorted(t["metadata"]["queueName"] for t in scaled["triggers"]
                           if t["type"] == "rabbitmq"),
                    [f"locality.jobs.{region}.batch", f"locality.jobs.{region}.interactive"])
                # The load: jobs its workers run and jobs held back in the control
                # store, of this region only (the test `operations.rs` reads the same
                # sum while a steady load runs).
                load = [t["metadata"]["query"] for t in scaled["triggers"]
                        if t["type"] == "prometheus"]
                self.assertEqual(load, [
                    'sum({__name__=~"locality_worker_jobs_in_flight|locality_tenant_jobs_waiting"'
                    f',region="{region}"}}) or vector(0)'])
                auth = one(documents, "TriggerAuthentication")["spec"]["secretTargetRef"]
                self.assertEqual({ref["name"] for ref in auth}, {f"locality-{region}"})
                config = loads_with_secrets(self, documents, region)
                self.assertEqual(set(config["regions"]), {region})
                self.assertEqual(config["regions"][region]["store"], f"s3://locality-{region}")
                self.assertEqual(config["regions"][region]["store_options"]["region"], nodes)
                for tenant, settings in config["tenants"].items():
                    self.assertEqual(settings["regions"], [region], tenant)
                # No other region's nodes, queues, Secret or variables anywhere.
                for other, other_nodes in REGIONS.items():
                    if other == region:
                        continue
                    for mark in (other_nodes, f"locality-{other}", f".{other}.",
                                 f"__{other.upper()}__", f"[regions.{other}]"):
                        self.assertNotIn(mark, text, f"{region} overlay mentions {mark}")

    def test_pods_drain_run_unprivileged_and_fit_the_memory_bound(self):
        for region in REGIONS:
            with self.subTest(region=region):
                _, documents = render(f"overlays/{region}")
                spec = one(documents, "Deployment")["spec"]["template"]["spec"]
                self.assertGreater(spec["terminationGracePeriodSeconds"], JOB_TIMEOUT_SECONDS)
                # Scale-in is the HPA's (cooldownPeriod only governs scaling to zero, and
                # the minimum is one): a window longer than the longest job, one pod at a
                # time; the pod that goes drains within its grace period.
                scaled = one(documents, "ScaledObject")["spec"]
                self.assertGreaterEqual(scaled["minReplicaCount"], 1)
                self.assertNotIn("cooldownPeriod", scaled)
                down = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
                self.assertGreater(down["stabilizationWindowSeconds"], JOB_TIMEOUT_SECONDS)
                self.assertEqual(down["selectPolicy"], "Min")
                self.assertEqual([(p["type"], p["value"]) for p in down["policies"]], [("Pods", 1)])
                self.assertTrue(spec["securityContext"]["runAsNonRoot"])
                container = spec["containers"][0]
                self.assert_probes_on_the_admin_listener(
                    container, one(documents, "Deployment")["spec"]["template"])
                self.assertTrue(container["securityContext"]["readOnlyRootFilesystem"])
                self.assertFalse(container["securityContext"]["allowPrivilegeEscalation"])
                limit = mebibytes(container["resources"]["limits"]["memory"])
                self.assertGreaterEqual(limit, WORKER_MEMORY_MIB)
                self.assertEqual(container["resources"]["requests"]["memory"],
                                 container["resources"]["limits"]["memory"])
                policy = one(documents, "NetworkPolicy")["spec"]
                self.assertEqual(sorted(policy["policyTypes"]), ["Egress", "Ingress"])
                self.assertEqual(len(policy["egress"]), 3, "DNS, the broker, the store")


class TheControlPlane(unittest.TestCase, ProbesApart):
    def test_two_schedulers_with_probes_and_every_regions_public_key(self):
        _, documents = render("control-plane")
        deployment = one(documents, "Deployment")["spec"]
        self.assertEqual(deployment["replicas"], 2)
        container = deployment["template"]["spec"]["containers"][0]
        self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assert_probes_on_the_admin_listener(container, deployment["template"])
        config = loads_with_secrets(self, documents, "control-plane")
        self.assertEqual(set(config["regions"]), set(REGIONS))
        for region, settings in config["regions"].items():
            self.assertIn("receipt_public_key", settings, region)


class NoSecretIsCommitted(unittest.TestCase):
    def test_no_secret_object_or_value_in_the_deployment_files(self):
        for overlay in [f"overlays/{r}" for r in REGIONS] + ["control-plane"]:
            _, documents = render(overlay)
            self.assertNotIn("Secret", {d["kind"] for d in documents}, overlay)
        secret_value = re.compile(
            r"(secret_access_key|receipt_key|download_key|pseudonymisation_key|password)\s*[=:]"
            r"|[a-z]+://[^/\s:@]+:[^/\s@]+@")
        for path in (ROOT / "k8s").rglob("*"):
            if path.is_file() and path.suffix in (".yaml", ".toml"):
                for number, line in enumerate(path.read_text().splitlines(), 1):
                    self.assertIsNone(secret_value.search(line), f"{path}:{number}: {line}")


if __name__ == "__main__":
    unittest.main()
