"""The official Python `kubernetes` client, unmodified, against skiff's REST API.

Run by tests/python_client.rs: `python3 client.py KUBECONFIG IMAGE`. Every
step asserts what the cluster answered; the last line printed is "ok".
"""
import sys
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream as exec_stream

config.load_kube_config(config_file=sys.argv[1])
image = sys.argv[2]
core = client.CoreV1Api()
apps = client.AppsV1Api()
ns = "python"


def until(what, check, timeout=120):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def refused(status, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ApiException as e:
        assert e.status == status, f"{call.__name__}: {e.status} {e.body}"
        return e
    raise AssertionError(f"{call.__name__} succeeded, expected {status}")


# CRUD on a Namespace and ConfigMaps, with replace and patches.
core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
core.create_namespaced_config_map(ns, client.V1ConfigMap(
    metadata=client.V1ObjectMeta(name="settings", labels={"app": "py"}), data={"a": "1"}))
settings = core.read_namespaced_config_map("settings", ns)
assert settings.data == {"a": "1"}, settings.data
settings.data["b"] = "2"
core.replace_namespaced_config_map("settings", ns, settings)
core.patch_namespaced_config_map("settings", ns, {"data": {"c": "3"}})
core.patch_namespaced_config_map("settings", ns, [{"op": "remove", "path": "/data/a"}])
assert core.read_namespaced_config_map("settings", ns).data == {"b": "2", "c": "3"}
stale = settings  # carries the resourceVersion from before the writes above
stale.data = {"lost": "update"}
refused(409, core.replace_namespaced_config_map, "settings", ns, stale)
assert [c.metadata.name for c in core.list_namespaced_config_map(ns, label_selector="app=py").items] == ["settings"]
refused(409, core.create_namespaced_config_map, ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings")))

# A watch, then one resumed from the last version it saw.
listed = core.list_namespaced_config_map(ns)
core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="first")))
seen = []
last = None
stream = watch.Watch()
for event in stream.stream(core.list_namespaced_config_map, ns,
                           resource_version=listed.metadata.resource_version, timeout_seconds=30):
    seen.append((event["type"], event["object"].metadata.name))
    last = event["object"].metadata.resource_version
    if event["object"].metadata.name == "first":
        stream.stop()
assert ("ADDED", "first") in seen, seen
core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="second")))
resumed = []
stream = watch.Watch()
for event in stream.stream(core.list_namespaced_config_map, ns, resource_version=last, timeout_seconds=30):
    resumed.append((event["type"], event["object"].metadata.name))
    if event["object"].metadata.name == "second":
        stream.stop()
assert resumed == [("ADDED", "second")], resumed

# A Deployment of a real container: scaled through its scale subresource,
# its pod's log read.
deployment = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "py"},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "py"}},
             "template": {"metadata": {"labels": {"app": "py"}}, "spec": {
                 "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": image,
                                 "command": ["sh", "-c", "echo hello from python; while true; do sleep 1; done"]}]}}},
}
apps.create_namespaced_deployment(ns, deployment)
apps.patch_namespaced_deployment_scale("py", ns, {"spec": {"replicas": 2}})
assert apps.read_namespaced_deployment_scale("py", ns).spec.replicas == 2
until("two ready replicas",
      lambda: (apps.read_namespaced_deployment_status("py", ns).status or client.V1DeploymentStatus()).ready_replicas == 2)
pod = core.list_namespaced_pod(ns, label_selector="app=py").items[0].metadata.name
until("the pod's log", lambda: "hello from python" in core.read_namespaced_pod_log(pod, ns))
# exec through the client's stream helper (a WebSocket, channel.k8s.io).
out = exec_stream(core.connect_get_namespaced_pod_exec, pod, ns, command=["sh", "-c", "echo $((6 * 7))"],
                  stderr=True, stdin=False, stdout=True, tty=False)
assert out.strip() == "42", repr(out)

# Bad input is refused with Kubernetes' codes and the field named.
invalid = dict(deployment, metadata={"name": "invalid"})
invalid["spec"] = dict(deployment["spec"], replicas=-1)
error = refused(422, apps.create_namespaced_deployment, ns, invalid)
assert "spec.replicas" in error.body, error.body
refused(404, core.read_namespaced_config_map, "missing", ns)

# Deletes.
core.delete_namespaced_config_map("settings", ns)
refused(404, core.read_namespaced_config_map, "settings", ns)
apps.delete_namespaced_deployment("py", ns, propagation_policy="Foreground")
until("the deployment gone", lambda: not apps.list_namespaced_deployment(ns).items)
print("ok")
