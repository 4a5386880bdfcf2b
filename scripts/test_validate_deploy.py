"""Unit tests of validate_deploy.py (scripts/validate-deploy runs them before the checks).

Each test copies the repository's own deployment files into a temporary directory, breaks one
thing the way a careless edit would, and asserts that the validator names it; the first test
asserts that the files as committed pass. kubernetes-validate is not run here (the real run
does it); `kubectl kustomize` runs in the tests that need it, when kubectl is installed.

    cd scripts && python3 -m unittest test_validate_deploy
"""

import os
import re
import shutil
import tempfile
import unittest

import yaml

import validate_deploy as vd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_IN_KUSTOMIZATION = ("secret.example.yaml", "dlq-requeue-job.yaml", "jobs/")


class Copy:
    """A throw-away copy of the files the validator reads."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="validate-deploy-test-")
        for f in ("Cargo.toml", "Dockerfile", "docker-compose.yml"):
            shutil.copy(os.path.join(REPO, f), self.root)
        for d in ("bin", "k8s"):
            shutil.copytree(os.path.join(REPO, d), os.path.join(self.root, d))

    def path(self, rel):
        return os.path.join(self.root, rel)

    def edit(self, rel, old, new, count=1):
        with open(self.path(rel), encoding="utf-8") as f:
            text = f.read()
        if old not in text:
            raise AssertionError(f"{rel} no longer contains {old!r}: update the test")
        with open(self.path(rel), "w", encoding="utf-8") as f:
            f.write(text.replace(old, new, count))

    def write(self, rel, text):
        os.makedirs(os.path.dirname(self.path(rel)), exist_ok=True)
        with open(self.path(rel), "w", encoding="utf-8") as f:
            f.write(text)

    def failures(self, kubectl=None):
        rep = vd.Report(quiet=True)
        vd.run_checks(self.root, rep, not_in_kustomization=NOT_IN_KUSTOMIZATION, kubectl=kubectl)
        return rep.failures

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)


class Base(unittest.TestCase):
    def setUp(self):
        self.c = Copy()
        self.addCleanup(self.c.close)

    def assertFails(self, pattern, kubectl=None):
        failures = self.c.failures(kubectl=kubectl)
        self.assertTrue(any(re.search(pattern, f) for f in failures),
                        f"no failure matches {pattern!r}; got {failures}")


class CommittedFiles(Base):
    def test_the_committed_files_pass(self):
        self.assertEqual(self.c.failures(kubectl=shutil.which("kubectl")), [])


class Helpers(unittest.TestCase):
    def test_command_binary(self):
        self.assertEqual(vd.command_binary(["planner", "plan", "--all"]), "planner")
        self.assertEqual(vd.command_binary(["bash", "-c", "seed --synthetic 3; exit 0"]), "seed")
        self.assertEqual(vd.command_binary("worker --concurrency 4"), "worker")
        self.assertIsNone(vd.command_binary([]))

    def test_selector_matches(self):
        labels = {"app.kubernetes.io/name": "vizhub-migrate", "app.kubernetes.io/component": "worker"}
        self.assertTrue(vd.selector_matches({"matchLabels": {"app.kubernetes.io/name": "vizhub-migrate"}}, labels))
        self.assertFalse(vd.selector_matches({"matchLabels": {"app.kubernetes.io/component": "planner"}}, labels))
        self.assertTrue(vd.selector_matches({"matchExpressions": [
            {"key": "app.kubernetes.io/component", "operator": "In", "values": ["worker", "planner"]}]}, labels))
        self.assertFalse(vd.selector_matches({"matchExpressions": [
            {"key": "tier", "operator": "Exists"}]}, labels))
        self.assertTrue(vd.selector_matches({}, labels))

    def test_uri_ports(self):
        self.assertEqual(vd.uri_ports("mongodb://u:p@a:27017,b:27018/db?replicaSet=rs0"), {27017, 27018})
        self.assertEqual(vd.uri_ports("amqp://u:p@rabbit/%2f"), {5672})
        self.assertEqual(vd.uri_ports("http://u:p@rabbit:15672/%2F"), {15672})

    def test_compose_default_port(self):
        self.assertEqual(vd.compose_default_port("127.0.0.1:${RABBITMQ_MGMT_HOST_PORT:-15673}:15672"), (15673, 15672))
        self.assertEqual(vd.compose_default_port("127.0.0.1::9090"), (None, 9090))
        self.assertEqual(vd.compose_default_port("8080:80"), (8080, 80))

    def test_cargo_bins_required_features(self):
        bins = vd.cargo_bins(REPO, vd.Report(quiet=True))
        self.assertEqual(bins["seed"], ("dev-data",))
        self.assertEqual(vd.production_bins(bins), {"planner", "worker", "dlq"})

    def test_seed_exit_status_runs_the_script(self):
        script = 'seed; rc=$$?; if [ "$$rc" -eq 3 ]; then exit 0; fi; exit "$$rc"'
        self.assertEqual(vd.seed_exit_status(script, 3), 0)
        self.assertEqual(vd.seed_exit_status(script, 2), 2)


class Dockerfile(Base):
    def test_unpinned_base_image(self):
        with open(self.c.path("Dockerfile"), encoding="utf-8") as f:
            runtime = re.search(r"^FROM (debian:bookworm-slim@sha256:[0-9a-f]{64})( AS \w+)?$", f.read(), re.M).group(1)
        self.c.edit("Dockerfile", f"FROM {runtime}", "FROM debian:bookworm-slim")
        self.assertFails(r"FROM debian:bookworm-slim: base images must be pinned by digest")

    def test_builder_and_runtime_on_different_debian_releases(self):
        self.c.edit("Dockerfile", "FROM debian:bookworm-slim@", "FROM debian:bullseye-slim@")
        self.assertFails(r"same Debian release")

    def test_binaries_not_stripped(self):
        self.c.edit("Dockerfile", "CARGO_PROFILE_RELEASE_STRIP=true", "CARGO_PROFILE_RELEASE_DEBUG=false")
        self.assertFails(r"stripped")

    def test_cargo_chef_unpinned(self):
        self.c.edit("Dockerfile", ' --version "${CARGO_CHEF_VERSION}"', "")
        self.assertFails(r"cargo-chef must be installed --locked with a pinned --version")

    def test_root_user(self):
        self.c.edit("Dockerfile", "USER 10001:10001", "USER root")
        self.assertFails(r"non-root USER 10001")

    def test_production_build_with_the_default_features(self):
        self.c.edit("Dockerfile", "cargo build --release --locked --no-default-features --bins",
                    "cargo build --release --locked --bins")
        self.assertFails(r"the production build must be `cargo build --release --locked --no-default-features --bins`")

    def test_dependencies_cooked_with_the_default_features(self):
        self.c.edit("Dockerfile", "cargo chef cook --release --locked --no-default-features",
                    "cargo chef cook --release --locked")
        self.assertFails(r"cargo chef cook must take the production build's --no-default-features")

    def test_seed_in_the_production_image(self):
        self.c.edit("Dockerfile", "for b in planner worker dlq; do", "for b in planner worker dlq seed; do")
        self.assertFails(r"requires the binaries \['dlq', 'planner', 'seed', 'worker'\] in the production image")

    def test_production_image_built_from_the_dev_image(self):
        self.c.edit("Dockerfile", "FROM runtime AS production", "FROM dev AS production")
        self.assertFails(r"the production image \(the last stage\) is built from the `dev` stage")

    def test_dev_image_last(self):
        self.c.edit("Dockerfile", "\nFROM runtime AS production\n", "\n")
        self.assertFails(r"the production image \(the last stage\) is built from the `dev` stage")

    def test_no_dev_stage(self):
        self.c.edit("Dockerfile", "FROM runtime AS dev", "FROM runtime AS development")
        self.assertFails(r"no `dev` stage: the development binaries \['seed'\] have no image")

    def test_seed_not_built_for_the_dev_image(self):
        self.c.edit("Dockerfile", "for b in seed; do", "for b in planner; do")
        self.assertFails(r"the development binaries \['seed'\] .* must be built for the `dev` image")


class Compose(Base):
    def test_header_and_port_mapping_disagree(self):
        self.c.edit("docker-compose.yml", "${RABBITMQ_MGMT_HOST_PORT:-15673}:15672",
                    "${RABBITMQ_MGMT_HOST_PORT:-15672}:15672")
        self.assertFails(r"header comment names the management UI on \[15673\].*publishes it on 15672")

    def test_rabbitmq_3(self):
        self.c.edit("docker-compose.yml", "image: rabbitmq:4.3-management", "image: rabbitmq:3.13-management")
        self.assertFails(r"not a RabbitMQ 4.x management image")

    def test_seed_usage_error_counted_as_success(self):
        self.c.edit("docker-compose.yml", '[ "$$rc" -eq 3 ]', '[ "$$rc" -eq 2 ]')
        self.assertFails(r"when seed exits 2 the service exits 0")

    def test_seed_from_the_production_image(self):
        self.c.edit("docker-compose.yml", "      target: dev\n", "")
        self.assertFails(r"service `seed` runs `seed`, a development binary: it must build the Dockerfile's `dev` target")

    def test_worker_from_the_dev_image(self):
        with open(self.c.path("docker-compose.yml"), encoding="utf-8") as f:
            compose = yaml.safe_load(f)
        compose["services"]["worker"]["build"] = {"context": ".", "target": "dev"}
        compose["services"]["worker"]["image"] = "vizhub-migrate-dev:local"
        self.c.write("docker-compose.yml", yaml.safe_dump(compose))
        self.assertFails(r"service `worker` runs `worker` from the `dev` image")

    def test_dev_and_production_images_under_one_name(self):
        self.c.edit("docker-compose.yml", "${VIZHUB_MIGRATE_DEV_IMAGE:-vizhub-migrate-dev:local}",
                    "${VIZHUB_MIGRATE_IMAGE:-vizhub-migrate:local}")
        self.assertFails(r"share the name .*each build would retag the other's")

    def test_scaled_worker_with_a_fixed_port(self):
        self.c.edit("docker-compose.yml", '- "127.0.0.1::9090"', '- "127.0.0.1:9090:9090"')
        self.assertFails(r"fixed host port")


class Kubernetes(Base):
    def test_seed_in_the_cluster(self):
        self.c.edit("k8s/planner-cronjob.yaml", 'command: ["planner", "plan", "--since-last"]',
                    'command: ["seed", "--synthetic", "10"]')
        self.assertFails(r"planner-cronjob.yaml.*runs `seed`, a development binary .* not the production image")

    def test_worker_gets_the_management_uri(self):
        self.c.edit("k8s/worker-deployment.yaml", """                name: vizhub-migrate-config
""", """                name: vizhub-migrate-config
            - secretRef:
                name: vizhub-migrate-secrets
""")
        self.assertFails(r"worker-deployment.yaml.*hands it AMQP_MANAGEMENT_URI")

    def test_worker_env_names_the_management_uri(self):
        self.c.edit("k8s/worker-deployment.yaml", "                  key: AMQP_URI\n",
                    "                  key: AMQP_URI\n            - name: AMQP_MANAGEMENT_URI\n"
                    "              valueFrom:\n                secretKeyRef:\n"
                    "                  name: vizhub-migrate-secrets\n                  key: AMQP_MANAGEMENT_URI\n")
        self.assertFails(r"worker-deployment.yaml.*receives AMQP_MANAGEMENT_URI")

    def test_missing_seccomp_profile(self):
        self.c.edit("k8s/planner-cronjob.yaml", "            seccompProfile:\n              type: RuntimeDefault\n", "")
        self.assertFails(r"planner-cronjob.yaml.*seccompProfile type RuntimeDefault is missing")

    def test_writable_root_filesystem_in_a_job(self):
        self.c.edit("k8s/jobs/planner-verify-all.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")
        self.assertFails(r"jobs/planner-verify-all.yaml.*readOnlyRootFilesystem")

    def test_default_service_account(self):
        self.c.edit("k8s/worker-deployment.yaml", "      serviceAccountName: vizhub-migrate\n", "")
        self.assertFails(r"worker-deployment.yaml.*serviceAccountName must be vizhub-migrate")

    def test_service_account_mounts_a_token(self):
        self.c.edit("k8s/serviceaccount.yaml", "automountServiceAccountToken: false", "automountServiceAccountToken: true")
        self.assertFails(r"serviceaccount.yaml: automountServiceAccountToken")

    def test_namespace_only_baseline(self):
        self.c.edit("k8s/namespace.yaml", "pod-security.kubernetes.io/enforce: restricted",
                    "pod-security.kubernetes.io/enforce: baseline")
        self.assertFails(r"namespace.yaml: label pod-security.kubernetes.io/enforce: restricted")

    def test_network_policy_misses_the_workers(self):
        self.c.edit("k8s/networkpolicy.yaml", "  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: vizhub-migrate",
                    "  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: vizhub-migrate\n"
                    "      app.kubernetes.io/component: planner")
        self.assertFails(r"worker-deployment.yaml: no NetworkPolicy selects the pods of Deployment vizhub-migrate-worker")

    def test_network_policy_without_mongodb(self):
        self.c.edit("k8s/networkpolicy.yaml", "          port: 27017\n", "          port: 27018\n", count=2)
        self.assertFails(r"egress to TCP 27017 \(V2_MONGO_URI, V3_MONGO_URI")

    def test_network_policy_opens_the_management_api(self):
        self.c.edit("k8s/networkpolicy.yaml", "          port: 5672\n", "          port: 5672\n        - protocol: TCP\n          port: 15672\n")
        self.assertFails(r"management API port 15672")

    def test_network_policy_ingress_beyond_metrics(self):
        self.c.edit("k8s/networkpolicy.yaml", "          port: 9090\n", "          port: 9090\n        - protocol: TCP\n          port: 22\n")
        self.assertFails(r"ingress must admit only the metrics port 9090")

    def test_jobs_listed_in_the_kustomization(self):
        self.c.edit("k8s/kustomization.yaml", "  - keda-scaledobject.yaml\n",
                    "  - keda-scaledobject.yaml\n  - jobs/planner-plan-all.yaml\n")
        self.assertFails(r"lists jobs/planner-plan-all.yaml, which must stay out of it")

    @unittest.skipUnless(shutil.which("kubectl"), "kubectl not installed")
    def test_kustomize_output_without_jobs(self):
        # A Job slipped in through a resource NOT_IN_KUSTOMIZATION does not name.
        shutil.copy(self.c.path("k8s/jobs/planner-plan-all.yaml"), self.c.path("k8s/oneoff.yaml"))
        self.c.edit("k8s/kustomization.yaml", "  - keda-scaledobject.yaml\n", "  - keda-scaledobject.yaml\n  - oneoff.yaml\n")
        self.assertFails(r"would start the Jobs \['vizhub-migrate-plan-all'\]", kubectl=shutil.which("kubectl"))

    def test_verify_job_retries_mismatches(self):
        self.c.edit("k8s/jobs/planner-verify-all.yaml", "values: [2, 3, 4]", "values: [2]")
        self.assertFails(r"planner verify.*podFailurePolicy must fail the Job")

    def test_no_plan_all_job(self):
        os.remove(self.c.path("k8s/jobs/planner-plan-all.yaml"))
        self.assertFails(r"no Job runs `planner plan --all`")

    def test_sed_recipe_in_a_comment(self):
        self.c.edit("k8s/planner-cronjob.yaml", "# vizhub-migrate-planner:",
                    "# kubectl create job ... -o yaml | sed 's/x/y/' | kubectl create -f -\n# vizhub-migrate-planner:")
        self.assertFails(r"planner-cronjob.yaml: a `\| sed` recipe")

    def test_keda_without_fallback(self):
        self.c.edit("k8s/keda-scaledobject.yaml", "  fallback:\n    failureThreshold: 3\n    replicas: 2\n", "")
        self.assertFails(r"fallback is missing")

    def test_keda_fallback_above_the_cap(self):
        self.c.edit("k8s/keda-scaledobject.yaml", "    replicas: 2\n", "    replicas: 20\n")
        self.assertFails(r"fallback.replicas 20 must be an integer within maxReplicaCount 9")

    def test_no_startup_probe(self):
        with open(self.c.path("k8s/worker-deployment.yaml"), encoding="utf-8") as f:
            text = f.read()
        text = re.sub(r"          startupProbe:\n(            .*\n|              .*\n)+", "", text)
        self.c.write("k8s/worker-deployment.yaml", text)
        self.assertFails(r"startupProbe must GET /healthz")

    def test_broken_json_and_yaml_under_k8s(self):
        self.c.write("k8s/monitoring/dashboard.json", '{"panels": [}')
        self.c.write("k8s/monitoring/broken.yaml", "a: [\n")
        self.assertFails(r"k8s/monitoring/dashboard.json: not valid JSON")
        self.assertFails(r"k8s/monitoring/broken.yaml: not valid YAML")

    def test_prometheus_rule_is_parsed_not_schema_validated(self):
        rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                "metadata": {"name": "vizhub-migrate", "namespace": "vizhub-migrate"},
                "spec": {"groups": [{"name": "g", "rules": []}]}}
        self.c.write("k8s/monitoring/rules.yaml", yaml.safe_dump(rule))
        self.c.write("k8s/monitoring/dashboard.json", '{"panels": []}')
        self.assertEqual(self.c.failures(), [])


if __name__ == "__main__":
    unittest.main()
