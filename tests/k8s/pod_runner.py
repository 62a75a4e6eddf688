#!/usr/bin/env python3
"""The pod runner: a TEST FIXTURE that stands in for the kubelet (and for a
volume provisioner) on the local control plane of scripts/k8s/up.

There is no container engine on the machines Nod is tested on, so a pod's
containers run as real processes on this machine:

* each pod gets its own network namespace (``nodk8s-<n>``) with its own pod IP
  on the control plane's bridge (10.214.0.0/16), routed through the root
  namespace where kube-proxy's rules turn ClusterIPs into pod IPs;
* each pod gets its own mount namespace in which its volumes are bind-mounted
  where the container expects them: a PersistentVolumeClaim is a directory
  that survives pod deletion and goes with the claim; the service account
  token volume is a real token from the TokenRequest API, bound to the pod
  (so the operator's RBAC is what the tests exercise);
* names resolve through a hosts file per namespace (``/etc/netns/NAME/hosts``,
  which ``ip netns exec`` mounts over /etc/hosts), kept in step with Services
  and EndpointSlices: ``<svc>.<ns>.svc`` (ClusterIP, or the ready endpoints of
  a headless Service, which include not-ready pods when the Service publishes
  them) and ``<pod>.<svc>.<ns>.svc`` for pods with a hostname and subdomain;
* the container's command (the image's entrypoint when it names none: images
  are mapped to the binaries in ``--bin-dir`` by the entrypoint's file name)
  runs with its args and env, ``$(VAR)`` references and downward-API values
  (POD_NAME, POD_IP, ...) filled in;
* phase and readiness come from the pod's own probes (httpGet, tcpSocket);
  a failing liveness probe restarts the process; an exited process restarts
  with back-off (restartPolicy Always);
* on delete: SIGTERM, then SIGKILL after the grace period, then the pod
  object is removed, as the kubelet does;
* a test can hold a pod's process down (a file ``<run-dir>/hold/<ns>_<pod>``):
  it is killed and not restarted until the file is gone;
* secret and configMap volumes, and the secret, configMap and downwardAPI
  sources of projected volumes, are synced again every 5 s, as the kubelet
  does (certificate rotation): a file whose content changed is replaced
  atomically (written to a temporary file in its directory, then renamed
  over it; the changed files of a volume are renamed one right after the
  other), an unchanged file is not touched (its mtime stays), a key removed
  from the object is removed from the volume; a missing object leaves the
  files as they are (unless the volume is ``optional``: then they go).
  Files are 0644. Service account tokens are written once and not renewed;
* ingress NetworkPolicies (networking.k8s.io/v1) are enforced, as a
  policy-enforcing network plugin would: a pod selected by no policy accepts
  everything; a pod selected by some accepts the union of their ingress
  rules (pod, namespace and ipBlock peers, numbered, ranged and named ports,
  TCP/UDP/SCTP). The rules are an iptables chain (NOD-INGRESS, jumped to from
  INPUT) in the pod's network namespace, whose filter table belongs to the
  runner and is replaced whole (iptables-restore) when the pod's allowed set
  changes (the chain is installed when the pod starts, accepting everything
  until a policy selects the pod). Always accepted, as Kubernetes
  specifies: loopback (the pod itself, and the runner's probes, which run
  inside the pod's namespace) and the node (10.214.0.1: this machine).
  Replies to accepted connections pass (conntrack, on from the pod's start),
  and connections open before a rule change stay open, as with a real
  plugin. IPv4 only: ip6tables is not touched (pods have no IPv6 address
  but link-local).

What it does not do: images, resource limits, users and capabilities
(processes run as root; securityContext is not applied), exec/logs through
the API, egress NetworkPolicies, volume file modes (defaultMode, items'
mode), the kubelet's ``..data`` symlink swap that changes all the files of
a volume at once (here they change one by one, within a moment), subPath
mounts of a synced volume staying current. Container output goes to
``<run-dir>/pods/<ns>_<pod>/<container>.log``.

NetworkPolicies bind traffic sent to a pod's IP (headless names resolve to
those). Traffic through a ClusterIP reaches the pod from the node's address,
because kube-proxy masquerades everything here (masqueradeAll: the pods
share a bridge without br_netfilter), so policies do not restrict it.

It is also the Nodes' heartbeat (Lease and Ready condition) and the
provisioner of the StorageClass ``local`` (provisioner nod.io/local-directory).
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime, timezone
from typing import NamedTuple

import requests
import yaml

PROVISIONER = "nod.io/local-directory"
BRIDGE = "nodk8s0"
GATEWAY = "10.214.0.1"
API_SERVICE_IP = "10.215.0.1"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
VOLUME_RESYNC_SECONDS = 5
INGRESS_CHAIN = "NOD-INGRESS"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log(*parts):
    print(f"{now()} pod-runner:", *parts, flush=True)


def run(*cmd, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


class Api:
    """A small Kubernetes API client (requests, client certificates)."""

    def __init__(self, kubeconfig: str):
        with open(kubeconfig) as f:
            kc = yaml.safe_load(f)
        cluster = kc["clusters"][0]["cluster"]
        user = kc["users"][0]["user"]
        self.server = cluster["server"]
        self.ca = cluster["certificate-authority"]
        self.cert = (user["client-certificate"], user["client-key"])
        self.local = threading.local()

    def session(self) -> requests.Session:
        s = getattr(self.local, "s", None)
        if s is None:
            s = requests.Session()
            # Only the kubeconfig counts: no CA bundle or proxy from the
            # environment (REQUESTS_CA_BUNDLE would replace our CA).
            s.trust_env = False
            s.verify = self.ca
            s.cert = self.cert
            self.local.s = s
        return s

    def request(self, method, path, body=None, content_type="application/json", params=None, ok=(200, 201)):
        data = json.dumps(body) if body is not None else None
        r = self.session().request(
            method, self.server + path, data=data, params=params,
            headers={"Content-Type": content_type}, timeout=15,
        )
        if r.status_code not in ok:
            raise ApiError(r.status_code, f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def get(self, path, params=None, ok=(200,)):
        return self.request("GET", path, params=params, ok=ok)

    def get_opt(self, path):
        try:
            return self.get(path)
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    def merge_patch(self, path, body):
        return self.request("PATCH", path, body, "application/merge-patch+json")


class ApiError(RuntimeError):
    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code


class IpPool:
    """Pod IPs 10.214.1.2 .. 10.214.255.254, never reused within a run (so a
    stale gossip or DNS entry never points at another pod)."""

    def __init__(self):
        self.next = 256 + 2
        self.lock = threading.Lock()

    def take(self) -> str:
        with self.lock:
            n = self.next
            self.next += 1
            if n % 256 in (0, 255):
                n += 2
                self.next = n + 1
        if n >= 65535:
            raise RuntimeError("out of pod IPs")
        return f"10.214.{n // 256}.{n % 256}"


class Runner:
    def __init__(self, args):
        self.api = Api(args.kubeconfig)
        self.run_dir = args.run_dir
        self.bin_dir = args.bin_dir
        self.nodes = [n for n in args.nodes.split(",") if n]
        self.pods: dict[str, PodWorker] = {}  # uid -> worker
        self.ips = IpPool()
        self.counter = 0
        self.lock = threading.Lock()
        self.hosts = ""
        self.stopping = False
        self.last_pods = []  # every pod of the cluster, as the last sync_pods saw them

    # ---- nodes
    def register_nodes(self):
        for name in self.nodes:
            node = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": "local",
                }},
            }
            try:
                self.api.request("POST", "/api/v1/nodes", node)
            except ApiError as e:
                if e.code != 409:
                    raise
        self.heartbeat()

    def heartbeat(self):
        for name in self.nodes:
            capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
            status = {"status": {
                "capacity": capacity, "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": GATEWAY}, {"type": "Hostname", "address": name}],
                "nodeInfo": {"kubeletVersion": "v1.36.3-nod-pod-runner", "operatingSystem": "linux",
                             "architecture": "amd64", "containerRuntimeVersion": "nod-pod-runner://0",
                             "kernelVersion": os.uname().release, "osImage": "pod runner (test fixture)",
                             "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "message": "the pod runner (a test fixture) is running",
                     "lastHeartbeatTime": now(), "lastTransitionTime": now()},
                    {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                     "lastHeartbeatTime": now(), "lastTransitionTime": now()},
                    {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
                     "lastHeartbeatTime": now(), "lastTransitionTime": now()},
                    {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
                     "lastHeartbeatTime": now(), "lastTransitionTime": now()},
                ],
            }}
            self.api.request("PATCH", f"/api/v1/nodes/{name}/status", status,
                             "application/strategic-merge-patch+json")
            lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
            lease = self.api.get_opt(lease_path)
            spec = {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}
            if lease is None:
                try:
                    self.api.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": name, "namespace": "kube-node-lease"}, "spec": spec})
                except ApiError as e:
                    if e.code not in (404, 409):  # the namespace may not exist yet
                        raise
            else:
                self.api.merge_patch(lease_path, {"spec": spec})

    # ---- volumes: the provisioner of StorageClass "local"
    def provision(self):
        classes = {c["metadata"]["name"]: c for c in
                   self.api.get("/apis/storage.k8s.io/v1/storageclasses")["items"]}
        ours = {n for n, c in classes.items() if c.get("provisioner") == PROVISIONER}
        default = next((n for n, c in classes.items() if c["metadata"].get("annotations", {}).get(
            "storageclass.kubernetes.io/is-default-class") == "true"), None)
        pvs = self.api.get("/api/v1/persistentvolumes")["items"]
        by_claim = {pv["spec"].get("claimRef", {}).get("uid"): pv for pv in pvs}
        for pvc in self.api.get("/api/v1/persistentvolumeclaims")["items"]:
            cls = pvc["spec"].get("storageClassName") or default
            if cls not in ours or pvc["metadata"].get("deletionTimestamp"):
                continue
            uid = pvc["metadata"]["uid"]
            ns, name = pvc["metadata"]["namespace"], pvc["metadata"]["name"]
            size = pvc["spec"]["resources"]["requests"]["storage"]
            pv = by_claim.get(uid)
            if pv is None and not pvc["spec"].get("volumeName"):
                path = os.path.join(self.run_dir, "volumes", f"{ns}_{name}_{uid[:8]}")
                os.makedirs(path, exist_ok=True)
                try:
                    self.api.request("POST", "/api/v1/persistentvolumes", {
                        "apiVersion": "v1", "kind": "PersistentVolume",
                        "metadata": {"name": f"pvc-{uid}", "annotations": {
                            "pv.kubernetes.io/provisioned-by": PROVISIONER}},
                        "spec": {
                            "capacity": {"storage": size},
                            "accessModes": pvc["spec"].get("accessModes", ["ReadWriteOnce"]),
                            "persistentVolumeReclaimPolicy": classes[cls].get("reclaimPolicy", "Delete"),
                            "storageClassName": cls,
                            "hostPath": {"path": path, "type": "Directory"},
                            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                         "namespace": ns, "name": name, "uid": uid},
                        }})
                    log(f"provisioned {ns}/{name} at {path}")
                except ApiError as e:
                    if e.code != 409:
                        raise
            elif pv is not None and pvc["status"].get("phase") == "Bound":
                # Expansion (what the external resizer and the kubelet do together).
                have = pvc["status"].get("capacity", {}).get("storage")
                if have != size and classes[cls].get("allowVolumeExpansion"):
                    self.api.merge_patch(f"/api/v1/persistentvolumes/{pv['metadata']['name']}",
                                         {"spec": {"capacity": {"storage": size}}})
                    self.api.merge_patch(
                        f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}/status",
                        {"status": {"capacity": {"storage": size}}})
                    log(f"expanded {ns}/{name} to {size}")
        for pv in pvs:
            ann = pv["metadata"].get("annotations", {})
            if ann.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
                continue
            if pv.get("status", {}).get("phase") == "Released" and \
                    pv["spec"].get("persistentVolumeReclaimPolicy") == "Delete":
                path = pv["spec"]["hostPath"]["path"]
                if path.startswith(os.path.join(self.run_dir, "volumes") + "/"):
                    run("rm", "-rf", path, check=False)
                try:
                    self.api.request("DELETE", f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
                    log(f"deleted volume {pv['metadata']['name']} ({path})")
                except ApiError as e:
                    if e.code != 404:
                        raise

    # ---- names
    def compute_hosts(self, services, slices, pods) -> str:
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback",
                 f"{API_SERVICE_IP} kubernetes kubernetes.default kubernetes.default.svc "
                 "kubernetes.default.svc.cluster.local"]
        svc_by = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in services}
        for (ns, name), s in sorted(svc_by.items()):
            if (ns, name) == ("default", "kubernetes"):
                continue
            names = f"{name}.{ns}.svc {name}.{ns}.svc.cluster.local"
            ip = s["spec"].get("clusterIP")
            if ip and ip != "None":
                lines.append(f"{ip} {names}")
        # Headless Services: their endpoints, and a name per pod with a hostname.
        for sl in slices:
            ns = sl["metadata"]["namespace"]
            svc = sl["metadata"].get("labels", {}).get("kubernetes.io/service-name")
            s = svc_by.get((ns, svc))
            if s is None or s["spec"].get("clusterIP") != "None":
                continue
            publish = s["spec"].get("publishNotReadyAddresses", False)
            for ep in sl.get("endpoints") or []:
                ready = ep.get("conditions", {}).get("ready", True)
                if not (ready or publish):
                    continue
                for addr in ep.get("addresses", []):
                    lines.append(f"{addr} {svc}.{ns}.svc {svc}.{ns}.svc.cluster.local")
                    if ep.get("hostname"):
                        h = ep["hostname"]
                        lines.append(f"{addr} {h}.{svc}.{ns}.svc {h}.{svc}.{ns}.svc.cluster.local")
        return "\n".join(lines) + "\n"

    def refresh_hosts(self):
        services = self.api.get("/api/v1/services")["items"]
        slices = self.api.get("/apis/discovery.k8s.io/v1/endpointslices")["items"]
        self.hosts = self.compute_hosts(services, slices, [])
        with self.lock:
            workers = list(self.pods.values())
        for w in workers:
            w.write_hosts(self.hosts)

    # ---- pods
    def sync_pods(self):
        items = self.api.get("/api/v1/pods")["items"]
        self.last_pods = items
        mine = {p["metadata"]["uid"]: p for p in items if p["spec"].get("nodeName") in self.nodes}
        with self.lock:
            for uid, pod in mine.items():
                w = self.pods.get(uid)
                if w is None:
                    if pod["metadata"].get("deletionTimestamp"):
                        # Never started here (a runner restart): nothing to stop.
                        self.finalize_unknown(pod)
                        continue
                    self.counter += 1
                    w = PodWorker(self, pod, self.counter)
                    self.pods[uid] = w
                    w.start()
                else:
                    w.update(pod)
            for uid, w in list(self.pods.items()):
                if uid not in mine:
                    w.gone()
                if w.finished:
                    del self.pods[uid]

    def finalize_unknown(self, pod):
        m = pod["metadata"]
        try:
            self.api.request("DELETE", f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}",
                             {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                              "preconditions": {"uid": m["uid"]}}, ok=(200, 202, 404, 409))
        except ApiError:
            pass

    # ---- NetworkPolicies: what a policy-enforcing network plugin does
    def enforce_policies(self):
        with self.lock:
            workers = list(self.pods.values())
        # A pod being deleted keeps the rules it has until its namespace goes.
        live = [w for w in workers if w.net_ready and not w.deleting.is_set()]
        if not live:
            return
        policies = self.api.get("/apis/networking.k8s.io/v1/networkpolicies")["items"]
        if not policies and all(w.ingress is None for w in live):
            return
        namespaces = namespace_labels(self.api.get("/api/v1/namespaces")["items"]) if policies else {}
        # Our pods' IPs as soon as they have one, even before their status says so.
        ips = {w.uid: w.ip for w in workers if w.ip}
        pods = []
        for p in self.last_pods:
            ip = ips.get(p["metadata"]["uid"])
            status = p.get("status") or {}
            if ip and not status.get("podIP"):
                p = {**p, "status": {**status, "podIP": ip}}
            pods.append(p)
        for w in live:
            try:
                w.enforce_ingress(policies, pods, namespaces)
            except Exception as e:
                log(f"{w.key}: network policy: {e}")

    # ---- secret, configMap and projected volumes: synced again, as the kubelet does
    def refresh_volumes(self):
        with self.lock:
            workers = [w for w in self.pods.values() if w.volumes_ready and not w.deleting.is_set()]
        cache = {}

        def get(ns, kind, name):
            k = (ns, kind, name)
            if k not in cache:
                cache[k] = self.api.get_opt(f"/api/v1/namespaces/{ns}/{kind}/{name}")
            return cache[k]

        for w in workers:
            try:
                w.refresh_volumes(get)
            except Exception as e:
                log(f"{w.key}: volumes: {e}")

    def loop(self):
        self.register_nodes()
        last_beat = time.monotonic()
        last_volumes = time.monotonic()
        while not self.stopping:
            try:
                self.provision()
                self.sync_pods()
                self.refresh_hosts()
                if time.monotonic() - last_beat > 10:
                    self.heartbeat()
                    last_beat = time.monotonic()
            except Exception as e:  # keep serving: the API may be restarting
                log("loop:", e)
            try:
                self.enforce_policies()
            except Exception as e:
                log("network policies:", e)
            if time.monotonic() - last_volumes >= VOLUME_RESYNC_SECONDS:
                last_volumes = time.monotonic()
                try:
                    self.refresh_volumes()
                except Exception as e:
                    log("volumes:", e)
            time.sleep(0.5)
        log("stopping: ending every pod")
        self.shutdown()

    def shutdown(self):
        with self.lock:
            workers = list(self.pods.values())
        for w in workers:
            w.gone(final_delete=False)
        for w in workers:
            w.thread.join(timeout=40)


def resolve_port(container, port):
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise ValueError(f"no container port named {port!r}")


# ---- NetworkPolicy evaluation: pure functions, no I/O (tests/k8s/test_pod_runner.py)

ALL_PORTS = (1, 65535)
ANYWHERE = "0.0.0.0/0"


class Allow(NamedTuple):
    """One kind of ingress a pod accepts: from ``src`` (an IPv4 CIDR),
    protocol ``proto`` ("all", "tcp", "udp" or "sctp"), to the destination
    ports port_min..port_max (ALL_PORTS: any; always so for "all")."""
    src: str
    proto: str
    port_min: int
    port_max: int


def selector_matches(selector, labels) -> bool:
    """A metav1.LabelSelector against labels: matchLabels and matchExpressions
    (In, NotIn, Exists, DoesNotExist) must all hold; an empty (or absent)
    selector matches everything. An unknown operator matches nothing."""
    if not selector:
        return True
    labels = labels or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif op == "Exists":
            ok = key in labels
        elif op == "DoesNotExist":
            ok = key not in labels
        else:
            return False
        if not ok:
            return False
    return True


def policy_selects(policy, pod) -> bool:
    """Whether an ingress policy applies to the pod: same namespace, its
    podSelector matches the pod's labels, and it is about ingress (policyTypes
    names Ingress; without policyTypes every policy is, as Kubernetes
    defaults it, with or without an ``ingress`` section)."""
    spec = policy.get("spec") or {}
    if policy["metadata"].get("namespace") != pod["metadata"].get("namespace"):
        return False
    types = spec.get("policyTypes")
    if types is not None and "Ingress" not in types:
        return False
    return selector_matches(spec.get("podSelector") or {}, pod["metadata"].get("labels"))


def namespace_labels(namespaces) -> dict:
    """Namespace objects -> {name: labels}, with the label every namespace
    carries (kubernetes.io/metadata.name) even where the object lacks it."""
    out = {}
    for n in namespaces:
        name = n["metadata"]["name"]
        labels = dict(n["metadata"].get("labels") or {})
        labels.setdefault("kubernetes.io/metadata.name", name)
        out[name] = labels
    return out


def pod_ipv4(pod):
    """The pod's IPv4 address, or None (none yet, not IPv4, or the pod is done)."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    ip = status.get("podIP")
    try:
        return ip if ip and ipaddress.ip_address(ip).version == 4 else None
    except ValueError:
        return None


def block_cidrs(block) -> list:
    """An ipBlock (cidr less its except list) as IPv4 CIDRs; [] for IPv6."""
    try:
        net = ipaddress.ip_network(block["cidr"], strict=False)
    except (KeyError, ValueError):
        return []
    if net.version != 4:
        return []
    nets = [net]
    for e in block.get("except") or []:
        try:
            ex = ipaddress.ip_network(e, strict=False)
        except ValueError:
            continue
        if ex.version != 4:
            continue
        out = []
        for n in nets:
            if ex.subnet_of(n):
                out.extend(n.address_exclude(ex))
            elif not n.subnet_of(ex):
                out.append(n)
        nets = out
    return [str(n) for n in sorted(nets)]


def peer_sources(peer, policy_ns, pods, namespaces) -> set:
    """The source CIDRs one ``from`` peer allows. podSelector alone: pods of
    the policy's namespace; namespaceSelector alone: every pod of the matching
    namespaces; both: the matching pods of the matching namespaces; ipBlock:
    its CIDRs. ``namespaces`` is {name: labels} (namespace_labels)."""
    if "ipBlock" in peer:
        return set(block_cidrs(peer["ipBlock"]))
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    if pod_sel is None and ns_sel is None:
        return set()
    out = set()
    for p in pods:
        ip = pod_ipv4(p)
        if ip is None:
            continue
        ns = p["metadata"].get("namespace")
        if ns_sel is None:
            if ns != policy_ns:
                continue
        elif not selector_matches(ns_sel, namespaces.get(ns, {"kubernetes.io/metadata.name": ns})):
            continue
        if pod_sel is not None and not selector_matches(pod_sel, p["metadata"].get("labels")):
            continue
        out.add(f"{ip}/32")
    return out


def named_port(pod, name, proto):
    """The number of the pod's container port of that name and protocol, or None."""
    for c in pod.get("spec", {}).get("containers", []):
        for cp in c.get("ports") or []:
            if cp.get("name") == name and (cp.get("protocol") or "TCP").lower() == proto:
                return cp["containerPort"]
    return None


def rule_ports(ports, pod):
    """A rule's ``ports`` as [(proto, port_min, port_max)] on the destination
    pod; None when the rule names none (all ports, all protocols). A named
    port the pod does not have allows nothing."""
    if not ports:
        return None
    out = []
    for p in ports:
        proto = (p.get("protocol") or "TCP").lower()
        port = p.get("port")
        if port is None:
            out.append((proto, *ALL_PORTS))
        elif isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
            lo = int(port)
            out.append((proto, lo, max(lo, int(p.get("endPort") or lo))))
        else:
            n = named_port(pod, port, proto)
            if n is not None:
                out.append((proto, n, n))
    return out


def ingress_allowed(pod, policies, pods, namespaces):
    """What ingress the pod accepts under the policies (all the cluster's
    NetworkPolicies; those of other namespaces are passed over): None when
    no policy selects it (everything), else the sorted tuple of Allow that
    the selecting policies' rules allow together (empty: nothing). ``pods``
    are the cluster's pods (the peers), ``namespaces`` {name: labels}."""
    selecting = [p for p in policies if policy_selects(p, pod)]
    if not selecting:
        return None
    out = set()
    for pol in selecting:
        pol_ns = pol["metadata"]["namespace"]
        for rule in (pol.get("spec") or {}).get("ingress") or []:
            peers = rule.get("from") or []
            if peers:
                sources = set()
                for peer in peers:
                    sources |= peer_sources(peer, pol_ns, pods, namespaces)
            else:
                sources = {ANYWHERE}
            ports = rule_ports(rule.get("ports"), pod)
            if ports is None:
                ports = [("all", *ALL_PORTS)]
            out.update(Allow(s, proto, lo, hi) for s in sources for proto, lo, hi in ports)
    return tuple(sorted(out, key=lambda a: (ipaddress.ip_network(a.src), a.proto, a.port_min, a.port_max)))


def ingress_table(allowed, node_ip=GATEWAY) -> str:
    """The whole filter table of a pod's network namespace, as input for
    iptables-restore (which replaces the table in one commit). INPUT jumps to
    NOD-INGRESS, which accepts replies (conntrack) and, when ``allowed`` is
    None (no policy selects the pod), nothing else: everything passes. Else
    it accepts loopback (the pod itself, the probes), the node, each Allow,
    and drops the rest.

    The conntrack rule is there even without a policy: the kernel tracks
    connections in a namespace only while a rule needs it, and a connection
    first seen mid-stream counts as NEW, so without it a policy arriving
    would cut the connections the pod already had (its own outgoing ones
    too), which a real plugin does not."""
    chain = f"-A {INGRESS_CHAIN}"
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             f":{INGRESS_CHAIN} - [0:0]", f"-A INPUT -j {INGRESS_CHAIN}",
             f"{chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    if allowed is not None:
        lines.append(f"{chain} -i lo -j ACCEPT")
        if node_ip:
            lines.append(f"{chain} -s {node_ip}/32 -j ACCEPT")
        for a in allowed:
            rule = chain
            if a.src != ANYWHERE:
                rule += f" -s {a.src}"
            if a.proto != "all":
                rule += f" -p {a.proto}"
                if (a.port_min, a.port_max) != ALL_PORTS:
                    port = str(a.port_min) if a.port_min == a.port_max else f"{a.port_min}:{a.port_max}"
                    rule += f" -m {a.proto} --dport {port}"
            lines.append(rule + " -j ACCEPT")
        lines.append(f"{chain} -j DROP")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# ---- volume contents

def select_items(data: dict, items) -> dict:
    """The files of a secret or configMap source: every key under its own
    name, or only the listed items at their paths (a missing key is skipped)."""
    if items:
        return {it["path"]: data[it["key"]] for it in items if it["key"] in data}
    return dict(data)


def write_files_atomic(d, files: dict, mode=0o644) -> list:
    """Writes {relative path: bytes} under d: each file whose content differs
    is written to a temporary file in its own directory, and once they all
    are, each is renamed over its target (a reader sees the old file or the
    new one, never part of one). Unchanged files are not touched. Returns
    the paths written."""
    staged = []
    done = 0
    try:
        for rel, content in sorted(files.items()):
            if isinstance(content, str):
                content = content.encode()
            path = os.path.join(d, rel)
            try:
                with open(path, "rb") as f:
                    if f.read() == content:
                        continue
            except FileNotFoundError:
                pass
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
            staged.append((tmp, path, rel))
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                os.fchmod(f.fileno(), mode)
        for tmp, path, _ in staged:
            os.rename(tmp, path)
            done += 1
    finally:
        for tmp, _, _ in staged[done:]:
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass
    return [rel for _, _, rel in staged]


class PodWorker:
    """One pod: its namespace, its volumes, its one container process."""

    def __init__(self, runner: Runner, pod, n: int):
        self.r = runner
        self.api = runner.api
        self.pod = pod
        m = pod["metadata"]
        self.ns, self.name, self.uid = m["namespace"], m["name"], m["uid"]
        self.key = f"{self.ns}_{self.name}"
        self.netns = f"nodk8s-{n}"
        self.veth = f"nk{n}"
        self.ip = None
        self.dir = os.path.join(runner.run_dir, "pods", f"{self.key}_{self.uid[:8]}")
        self.proc = None
        self.restarts = 0
        self.ready = False
        self.started = False
        self.deleting = threading.Event()
        self.final_delete = True
        self.finished = False
        self.hosts_written = None
        self.hosts_ready = False
        self.hosts_lock = threading.Lock()
        self.net_ready = False  # its network namespace is up (rules can go in)
        self.ingress = None  # the ingress_allowed() installed; None: no rules, all allowed
        self.ingress_error = None
        self.volumes_ready = False  # its volumes are set up (refresh_volumes may run)
        self.projections = []  # (volume dir, key, source) that refresh_volumes syncs
        self.volume_files = {}  # key -> the relative paths that source wrote
        self.thread = threading.Thread(target=self.main, name=self.key, daemon=True)

    def start(self):
        self.thread.start()

    def update(self, pod):
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()

    def gone(self, final_delete=True):
        self.final_delete = final_delete
        self.deleting.set()

    # ---- setup
    def setup_network(self):
        self.ip = self.r.ips.take()
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        run("ip", "link", "set", self.veth, "master", BRIDGE)
        run("ip", "link", "set", self.veth, "up")
        ex = ["ip", "netns", "exec", self.netns]
        run(*ex, "ip", "addr", "add", f"{self.ip}/16", "dev", "eth0")
        run(*ex, "ip", "link", "set", "eth0", "up")
        run(*ex, "ip", "link", "set", "lo", "up")
        run(*ex, "ip", "route", "add", "default", "via", GATEWAY)
        # The chain (accepting everything) from the start, so that conntrack
        # follows the pod's connections before a policy comes (ingress_table).
        try:
            self.install_ingress(None)
        except Exception as e:
            log(f"{self.key}: ingress chain not installed: {e}")
        self.net_ready = True
        os.makedirs(f"/etc/netns/{self.netns}", exist_ok=True)
        hostname = self.pod["spec"].get("hostname") or self.name
        with open(f"/etc/netns/{self.netns}/hostname", "w") as f:
            f.write(hostname + "\n")
        self.hosts_ready = True
        self.write_hosts(self.r.hosts)

    def write_hosts(self, hosts: str):
        with self.hosts_lock:
            self._write_hosts(hosts)

    def _write_hosts(self, hosts: str):
        if not self.hosts_ready or self.hosts_written == hosts:
            return
        spec = self.pod["spec"]
        own = self.name
        if spec.get("hostname") and spec.get("subdomain"):
            own = f"{spec['hostname']}.{spec['subdomain']}.{self.ns}.svc {spec['hostname']}"
        text = hosts + f"{self.ip} {own}\n"
        path = f"/etc/netns/{self.netns}/hosts"
        # In place: `ip netns exec` bind-mounted this very inode over /etc/hosts.
        with open(path, "a+") as f:
            f.seek(0)
            f.truncate()
            f.write(text)
        self.hosts_written = hosts

    def volume_dirs(self):
        """volume name -> a directory on this machine holding its contents."""
        out = {}
        spec = self.pod["spec"]
        for v in spec.get("volumes", []):
            name = v["name"]
            d = os.path.join(self.dir, "volumes", name)
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                out[name] = self.claim_dir(claim)
            elif "emptyDir" in v:
                os.makedirs(d, exist_ok=True)
                out[name] = d
            elif "projected" in v:
                os.makedirs(d, exist_ok=True)
                for i, src in enumerate(v["projected"].get("sources", [])):
                    self.project(d, src, (name, i))
                out[name] = d
            elif "configMap" in v or "secret" in v:
                os.makedirs(d, exist_ok=True)
                self.project(d, v, (name, 0))
                out[name] = d
            else:
                raise RuntimeError(f"volume {name}: this fixture supports persistentVolumeClaim, "
                                   "emptyDir, projected, configMap and secret volumes")
        return out

    def claim_dir(self, claim):
        deadline = time.monotonic() + 120
        while True:
            pvc = self.api.get_opt(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim}")
            # A claim being deleted is not used, as the kubelet refuses it: its
            # volume is about to go (the pod waits for the claim made anew).
            if pvc and pvc["status"].get("phase") == "Bound" and not pvc["metadata"].get("deletionTimestamp"):
                pv = self.api.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
                path = (pv["spec"].get("hostPath") or pv["spec"].get("local") or {}).get("path")
                if not path:
                    raise RuntimeError(f"claim {claim}: its volume has no directory")
                os.makedirs(path, exist_ok=True)
                return path
            if time.monotonic() > deadline or self.deleting.is_set():
                raise RuntimeError(f"claim {claim} is not bound (or is being deleted)")
            time.sleep(0.5)

    def project(self, d, src, key=None):
        """Writes one source of a volume into d. The secret, configMap and
        downwardAPI parts are remembered under key, and refresh_volumes keeps
        them current; the token is written once."""
        if "serviceAccountToken" in src:
            sat = src["serviceAccountToken"]
            sa = self.pod["spec"].get("serviceAccountName", "default")
            req = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
                "audiences": [sat["audience"]] if sat.get("audience") else None,
                "expirationSeconds": sat.get("expirationSeconds", 3607),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}}}
            if req["spec"]["audiences"] is None:
                del req["spec"]["audiences"]
            tr = self.api.request("POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", req)
            self.write_file(d, sat.get("path", "token"), tr["status"]["token"])
        if any(k in src for k in ("configMap", "secret", "downwardAPI")):
            key = key or (os.path.basename(d), 0)
            # A missing object: nothing for now (refresh_volumes writes it once it exists).
            self.sync_files(d, key, self.source_files(src, self.get_object) or {})
            self.projections.append((d, key, src))

    def get_object(self, ns, kind, name):
        return self.api.get_opt(f"/api/v1/namespaces/{ns}/{kind}/{name}")

    def source_files(self, src, get):
        """{relative path: bytes} of a source's secret, configMap and
        downwardAPI parts; None when an object it needs is missing (and the
        source is not optional). get(ns, kind, name) reads an object."""
        files = {}
        missing = False
        if "configMap" in src:
            ref = src["configMap"]
            cm = get(self.ns, "configmaps", ref["name"])
            if cm is None:
                missing = missing or not ref.get("optional")
            else:
                data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
                data.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
                files.update(select_items(data, ref.get("items")))
        if "secret" in src:
            ref = src["secret"]
            s = get(self.ns, "secrets", ref.get("name") or ref.get("secretName"))
            if s is None:
                missing = missing or not ref.get("optional")
            else:
                data = {k: base64.b64decode(v) for k, v in (s.get("data") or {}).items()}
                files.update(select_items(data, ref.get("items")))
        if "downwardAPI" in src:
            for item in src["downwardAPI"].get("items", []):
                if "fieldRef" not in item:
                    raise RuntimeError(f"downwardAPI {item.get('path')}: this fixture supports fieldRef only")
                files[item["path"]] = self.field(item["fieldRef"]["fieldPath"]).encode()
        return None if missing else files

    def sync_files(self, d, key, files):
        """Makes the files of one source (key) in d what ``files`` says:
        changed ones replaced atomically, the ones it no longer has removed
        (unless another source of the volume writes them). Returns (written,
        removed) relative paths."""
        others = set()
        for k, paths in self.volume_files.items():
            if k != key and k[0] == key[0]:
                others |= paths
        written = write_files_atomic(d, files)
        removed = sorted(self.volume_files.get(key, set()) - set(files) - others)
        for rel in removed:
            try:
                os.remove(os.path.join(d, rel))
            except FileNotFoundError:
                pass
        self.volume_files[key] = set(files)
        return written, removed

    def refresh_volumes(self, get):
        """The kubelet's periodic sync of secret, configMap and projected
        volumes (not of tokens). An object that is missing leaves its files."""
        for d, key, src in self.projections:
            files = self.source_files(src, get)
            if files is None:
                continue
            written, removed = self.sync_files(d, key, files)
            if written or removed:
                log(f"{self.key}: volume {key[0]}: "
                    + "; ".join(x for x in (written and "updated " + ", ".join(written),
                                            removed and "removed " + ", ".join(removed)) if x))

    @staticmethod
    def write_file(d, rel, content):
        write_files_atomic(d, {rel: content})

    # ---- NetworkPolicy
    def install_ingress(self, allowed) -> bool:
        """Replaces the filter table of the pod's namespace (ingress_table)."""
        r = subprocess.run(["ip", "netns", "exec", self.netns, "iptables-restore", "--wait=5"],
                           input=ingress_table(allowed), capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            err = r.stderr.strip() or f"iptables-restore exited with {r.returncode}"
            if err != self.ingress_error:  # once, not every loop
                log(f"{self.key}: ingress rules not installed: {err}")
            self.ingress_error = err
            return False
        self.ingress_error = None
        self.ingress = allowed
        return True

    def enforce_ingress(self, policies, pods, namespaces):
        """Installs the pod's ingress rules when what it may accept changed."""
        allowed = ingress_allowed(self.pod, policies, pods, namespaces)
        if allowed == self.ingress or not self.install_ingress(allowed):
            return
        if allowed is None:
            log(f"{self.key}: no NetworkPolicy selects it: all ingress allowed")
        else:
            names = sorted(p["metadata"]["name"] for p in policies if policy_selects(p, self.pod))
            sources = {a.src for a in allowed}
            ports = {(a.proto, a.port_min, a.port_max) for a in allowed}
            log(f"{self.key}: ingress by NetworkPolicy {', '.join(names)}: {len(allowed)} rules, "
                f"{len(sources)} sources, {len(ports)} protocol/port ranges")

    def field(self, path):
        m, spec = self.pod["metadata"], self.pod["spec"]
        values = {
            "metadata.name": m["name"], "metadata.namespace": m["namespace"], "metadata.uid": m["uid"],
            "spec.nodeName": spec.get("nodeName", ""), "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": self.ip or "", "status.hostIP": GATEWAY, "status.podIPs": self.ip or "",
        }
        mm = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if mm:
            return m.get(mm.group(1), {}).get(mm.group(2), "")
        if path not in values:
            raise RuntimeError(f"fieldRef {path} is not supported by this fixture")
        return values[path]

    def environment(self, c):
        # HOME is the pod's own directory, so no tool finds this machine's
        # configuration (a kubeconfig in /root/.kube would beat the token).
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": self.dir,
               "HOSTNAME": self.pod["spec"].get("hostname") or self.name,
               "KUBERNETES_SERVICE_HOST": API_SERVICE_IP, "KUBERNETES_SERVICE_PORT": "443",
               "KUBERNETES_SERVICE_PORT_HTTPS": "443"}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "fieldRef" in vf:
                    env[e["name"]] = self.field(vf["fieldRef"]["fieldPath"])
                elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                    kind = "secrets" if "secretKeyRef" in vf else "configmaps"
                    obj = self.api.get_opt(f"/api/v1/namespaces/{self.ns}/{kind}/{ref['name']}") or {}
                    val = obj.get("data", {}).get(ref["key"])
                    if val is None:
                        if ref.get("optional"):
                            continue
                        raise RuntimeError(f"env {e['name']}: {kind}/{ref['name']} has no key {ref['key']}")
                    env[e["name"]] = base64.b64decode(val).decode() if kind == "secrets" else val
                else:
                    raise RuntimeError(f"env {e['name']}: only fieldRef, secretKeyRef and configMapKeyRef")
        return env

    def command(self, c, env):
        cmd = c.get("command")
        if not cmd:
            # The images' entrypoints (Nod's Dockerfile): one image, both binaries.
            cmd = ["/usr/local/bin/nod"]
        exe = os.path.join(self.r.bin_dir, os.path.basename(cmd[0]))
        if not os.access(exe, os.X_OK):
            raise RuntimeError(f"{cmd[0]}: no {exe} (build the binaries first)")
        return [exe] + [expand(a, env) for a in cmd[1:]] + [expand(a, env) for a in c.get("args", [])]

    # ---- the lifecycle
    def main(self):
        try:
            self.run_pod()
        except Exception as e:
            log(f"{self.key}: {e}")
            traceback.print_exc()
            self.report_failure(str(e))
            self.deleting.wait()
        finally:
            self.teardown()

    def report_failure(self, msg):
        try:
            self.api.merge_patch(f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status", {"status": {
                "phase": "Pending", "hostIP": GATEWAY,
                "conditions": [{"type": "Ready", "status": "False", "reason": "PodRunnerError",
                                "message": msg, "lastTransitionTime": now()}]}})
        except Exception:
            pass

    def run_pod(self):
        spec = self.pod["spec"]
        containers = spec["containers"]
        if len(containers) != 1 or spec.get("initContainers"):
            raise RuntimeError("this fixture runs pods of exactly one container and no init containers")
        c = containers[0]
        os.makedirs(self.dir, exist_ok=True)
        self.setup_network()
        vols = self.volume_dirs()
        mounts = []
        for vm in c.get("volumeMounts", []):
            src = vols[vm["name"]]
            if vm.get("subPath"):
                src = os.path.join(src, vm["subPath"])
                os.makedirs(src, exist_ok=True)
            mounts.append((src, vm["mountPath"]))
        if spec.get("automountServiceAccountToken", True) and \
                not any(t == SA_DIR for _, t in mounts) and spec.get("serviceAccountName"):
            d = os.path.join(self.dir, "volumes", "kube-api-access")
            os.makedirs(d, exist_ok=True)
            self.project(d, {"serviceAccountToken": {"path": "token"}})
            self.write_file(d, "ca.crt", open(self.r.api.ca).read())
            self.write_file(d, "namespace", self.ns)
            mounts.append((d, SA_DIR))
        self.volumes_ready = True
        env = self.environment(c)
        argv = self.command(c, env)
        start_time = now()
        self.patch_status(start_time, c, running=False)
        startup = c.get("startupProbe")
        readiness = c.get("readinessProbe")
        liveness = c.get("livenessProbe")
        backoff = 1
        while not self.deleting.is_set():
            self.spawn(argv, env, mounts, c.get("workingDir"))
            self.started = startup is None
            started_at = time.monotonic()
            self.patch_status(start_time, c, running=True)
            fails = {"startup": 0, "liveness": 0, "readiness": 0}
            next_probe = {k: started_at + (p or {}).get("initialDelaySeconds", 0)
                          for k, p in (("startup", startup), ("liveness", liveness), ("readiness", readiness))}
            while not self.deleting.is_set() and self.proc.poll() is None:
                t = time.monotonic()
                if self.held():
                    log(f"{self.key}: held down by the tests; killing it")
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    break
                if not self.started and t >= next_probe["startup"]:
                    next_probe["startup"] = t + startup.get("periodSeconds", 10)
                    if self.probe(c, startup):
                        self.started = True
                        next_probe["readiness"] = t
                        self.patch_status(start_time, c, running=True)
                    else:
                        fails["startup"] += 1
                        if fails["startup"] >= startup.get("failureThreshold", 3):
                            log(f"{self.key}: startup probe failed {fails['startup']} times; restarting")
                            self.stop(c, spec)
                            break
                if self.started and liveness and t >= next_probe["liveness"]:
                    next_probe["liveness"] = t + liveness.get("periodSeconds", 10)
                    if self.probe(c, liveness):
                        fails["liveness"] = 0
                    else:
                        fails["liveness"] += 1
                        if fails["liveness"] >= liveness.get("failureThreshold", 3):
                            log(f"{self.key}: liveness probe failed {fails['liveness']} times; restarting")
                            self.stop(c, spec)
                            break
                if t >= next_probe["readiness"]:
                    period = (readiness or {}).get("periodSeconds", 10)
                    next_probe["readiness"] = t + period
                    ok = self.started and (readiness is None or self.probe(c, readiness))
                    if ok:
                        fails["readiness"] = 0
                    else:
                        fails["readiness"] += 1
                    was = self.ready
                    if ok:
                        self.ready = True
                    elif readiness is None or fails["readiness"] >= readiness.get("failureThreshold", 3) \
                            or not was:
                        self.ready = False
                    if was != self.ready:
                        self.patch_status(start_time, c, running=True)
                time.sleep(0.2)
            if self.deleting.is_set():
                break
            code = self.proc.wait()
            self.ready = False
            self.restarts += 1
            log(f"{self.key}: exited with {code}; restart {self.restarts} in {backoff}s")
            self.patch_status(start_time, c, running=False, exit_code=code)
            if self.deleting.wait(backoff):
                break
            while self.held() and not self.deleting.wait(0.5):
                pass
            if self.deleting.is_set():
                break
            backoff = min(backoff * 2, 10)
            if time.monotonic() - started_at > 60:
                backoff = 1
        self.ready = False
        self.stop(c, spec)

    def held(self) -> bool:
        """The tests hold a member down (quorum loss) with a file named after
        the pod in <run-dir>/hold: its process is killed and not restarted
        until the file is gone, as a crashed machine would be."""
        return os.path.exists(os.path.join(self.r.run_dir, "hold", self.key))

    def spawn(self, argv, env, mounts, workdir):
        script = "set -e\n"
        for i, (src, target) in enumerate(mounts):
            script += f'mkdir -p "$T{i}"; mount --bind "$S{i}" "$T{i}"\n'
            env[f"S{i}"], env[f"T{i}"] = src, target
        if workdir:
            script += f'cd "{workdir}"\n'
        script += 'exec "$@"\n'
        full = ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private",
                "--", "/bin/sh", "-c", script, "sh"] + argv
        logf = open(os.path.join(self.dir, "container.log"), "ab")
        with logf:
            self.proc = subprocess.Popen(full, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        for i in range(len(mounts)):
            env.pop(f"S{i}"), env.pop(f"T{i}")
        with open(os.path.join(self.r.run_dir, "pids", f"pod-{self.key}.pid"), "w") as f:
            f.write(str(self.proc.pid))
        log(f"{self.key}: started {os.path.basename(argv[0])} as {self.proc.pid} at {self.ip} in {self.netns}")

    def probe(self, c, p) -> bool:
        timeout = p.get("timeoutSeconds", 1)
        if "httpGet" in p:
            g = p["httpGet"]
            port = resolve_port(c, g["port"])
            path = g.get("path", "/")
            r = subprocess.run(["ip", "netns", "exec", self.netns, "curl", "-s", "-o", "/dev/null",
                                "-w", "%{http_code}", "--max-time", str(timeout),
                                f"http://{self.ip}:{port}{path}"], capture_output=True, text=True)
            return r.stdout.isdigit() and 200 <= int(r.stdout) < 400
        if "tcpSocket" in p:
            port = resolve_port(c, p["tcpSocket"]["port"])
            r = subprocess.run(["ip", "netns", "exec", self.netns, "bash", "-c",
                                f"exec 3<>/dev/tcp/{self.ip}/{port}"], capture_output=True, timeout=timeout + 1)
            return r.returncode == 0
        raise RuntimeError("this fixture supports httpGet and tcpSocket probes")

    def stop(self, c, spec):
        if self.proc is None or self.proc.poll() is not None:
            return
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=max(grace, 0))
        except subprocess.TimeoutExpired:
            log(f"{self.key}: still running after {grace}s; SIGKILL")
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def patch_status(self, start_time, c, running, exit_code=None):
        ready = "True" if (running and self.ready) else "False"
        if running:
            state = {"running": {"startedAt": start_time}}
        else:
            state = {"waiting": {"reason": "ContainerCreating" if exit_code is None else "CrashLoopBackOff"}}
        cs = {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": ready == "True",
              "restartCount": self.restarts, "started": running and self.started, "state": state,
              "containerID": f"nod-pod-runner://{self.uid}"}
        if exit_code is not None:
            cs["lastState"] = {"terminated": {"exitCode": exit_code, "finishedAt": now()}}
        conds = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": start_time},
            {"type": "Initialized", "status": "True", "lastTransitionTime": start_time},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now()},
            {"type": "Ready", "status": ready, "lastTransitionTime": now()},
        ]
        body = {"status": {"phase": "Running" if running or exit_code is not None else "Pending",
                           "hostIP": GATEWAY, "hostIPs": [{"ip": GATEWAY}],
                           "podIP": self.ip, "podIPs": [{"ip": self.ip}], "startTime": start_time,
                           "conditions": conds, "containerStatuses": [cs]}}
        try:
            self.api.request("PATCH", f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status", body,
                             "application/strategic-merge-patch+json")
        except ApiError as e:
            if e.code != 404:
                log(f"{self.key}: status: {e}")

    def teardown(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        run("ip", "netns", "del", self.netns, check=False)
        run("ip", "link", "del", self.veth, check=False)
        run("rm", "-rf", f"/etc/netns/{self.netns}", check=False)
        try:
            os.remove(os.path.join(self.r.run_dir, "pids", f"pod-{self.key}.pid"))
        except FileNotFoundError:
            pass
        if self.final_delete:
            self.r.finalize_unknown(self.pod)
        log(f"{self.key}: stopped")
        self.finished = True


def expand(s: str, env: dict) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, s)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--bin-dir", required=True, help="where the nod and nod-operator binaries are")
    p.add_argument("--nodes", required=True, help="comma-separated Node names this runner serves")
    args = p.parse_args()
    runner = Runner(args)

    def on_signal(*_):
        # Only a flag: the loop may hold the lock the shutdown takes.
        runner.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.loop()


if __name__ == "__main__":
    main()
