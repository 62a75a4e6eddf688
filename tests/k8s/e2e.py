#!/usr/bin/env python3
"""Nod on a real Kubernetes control plane: the end-to-end scenarios.

Run by scripts/k8s/e2e, after scripts/k8s/up started the control plane and
the pod runner (tests/k8s/pod_runner.py, the kubelet stand-in). Each scenario
drives the cluster the way a user does (helm, kubectl, etcdctl) and asserts
its state through kubectl and through Nod's own API. Ends with the line
``k8s-e2e: N scenarios, N passed, 0 failed``.

usage: e2e.py [--only NAME[,NAME...] | --core] [--list]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.environ.get("NOD_K8S_RUN", "/tmp/nod-k8s")
# Where scripts/k8s/up found kubectl and helm (absent before it ran: --list works anyway).
BIN = open(os.path.join(RUN, "bin")).read().strip() if os.path.exists(os.path.join(RUN, "bin")) else ""
ENV = dict(os.environ, KUBECONFIG=os.path.join(RUN, "admin.kubeconfig"))
ETCDCTL = os.environ.get("ETCDCTL", "etcdctl")


class Failed(AssertionError):
    pass


def sh(*cmd, check=True, timeout=120, input=None) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise Failed(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def kubectl(*args, **kw) -> str:
    return sh(os.path.join(BIN, "kubectl"), *args, **kw)


def kjson(*args):
    return json.loads(kubectl(*args, "-o", "json"))


def helm(*args, **kw) -> str:
    return sh(os.path.join(BIN, "helm"), *args, **kw)


def etcdctl(endpoints, *args, check=True, timeout=30) -> str:
    if isinstance(endpoints, (list, tuple)):
        endpoints = ",".join(endpoints)
    return sh(ETCDCTL, f"--endpoints={endpoints}", "--command-timeout=10s", "--dial-timeout=5s", *args,
              check=check, timeout=timeout)


def say(msg):
    print(f"    {time.strftime('%H:%M:%S')} {msg}", flush=True)


def wait_until(what, fn, timeout=240, interval=1.0):
    """Polls fn until it returns a truthy value; fails with what it last saw."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last = v
        except Exception as e:  # the cluster may be between states
            last = e
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout}s waiting for {what} (last: {last})")
        time.sleep(interval)


# ---- the cluster as Kubernetes and Nod show it

def nodcluster(name, ns="default"):
    return kjson("get", "nodcluster", name, "-n", ns)


def status(name, ns="default"):
    return nodcluster(name, ns).get("status", {})


def pods(name, ns="default"):
    # Members only: the backup agent's pod shares the instance label.
    out = kjson("get", "pods", "-n", ns, "-l", f"app.kubernetes.io/name=nod,app.kubernetes.io/instance={name}")
    return {p["metadata"]["name"]: p for p in out["items"]}


def pod_ip(pod):
    return pod.get("status", {}).get("podIP")


def client_ip(name, ns="default"):
    return kjson("get", "service", name, "-n", ns)["spec"]["clusterIP"]


def endpoint_status(ip):
    """etcdctl endpoint status of one member: (cluster id, member id, leader, raft index)."""
    out = json.loads(etcdctl(f"{ip}:2379", "endpoint", "status", "-w", "json"))
    h = out[0]["Status"]["header"]
    return h["cluster_id"], h["member_id"], out[0]["Status"]["leader"], out[0]["Status"]["raftIndex"]


def members(ip):
    out = json.loads(etcdctl(f"{ip}:2379", "member", "list", "-w", "json"))
    return out["members"]


def running(name, n, ns="default"):
    """The NodCluster shows n/n Running, and every pod is Ready."""
    def check():
        st = status(name, ns)
        ps = pods(name, ns)
        ready = [p for p in ps.values() if any(
            c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))]
        return (st.get("ready") == f"{n}/{n}" and st.get("phase") == "Running" and len(ready) == n
                and len(ps) == n and st)
    return wait_until(f"{ns}/{name} to show {n}/{n} Running", check)


def one_cluster(name, n, ns="default"):
    """Every pod answers with the same cluster id and sees n voters."""
    ps = pods(name, ns)
    seen = {}
    for pname, p in ps.items():
        cid, mid, leader, _ = endpoint_status(pod_ip(p))
        seen[pname] = (cid, mid, leader)
    cids = {v[0] for v in seen.values()}
    if len(cids) != 1:
        raise Failed(f"the pods of {name} belong to {len(cids)} clusters: {seen}")
    ms = members(pod_ip(next(iter(ps.values()))))
    voters = [m for m in ms if not m.get("isLearner")]
    if len(voters) != n or len(ms) != n:
        raise Failed(f"{name}: want {n} voters, member list is {ms}")
    return seen


def apply(yaml_text):
    return kubectl("apply", "-f", "-", input=yaml_text)


def cluster_yaml(name, replicas, extra="", storage="{size: 1Gi}"):
    return f"""apiVersion: nod.io/v1alpha1
kind: NodCluster
metadata:
  name: {name}
spec:
  replicas: {replicas}
  storage: {storage}
{extra}"""


def delete_cluster(name, ns="default"):
    kubectl("delete", "nodcluster", name, "-n", ns, "--ignore-not-found", "--wait=true", "--timeout=120s")
    wait_until(f"the pods of {name} to go", lambda: not pods(name, ns), timeout=120)


# ---- scenarios

def ensure_example():
    """The operator and the 3-member `example` cluster of scenario 1, for a
    scenario run on its own (--only)."""
    if "nod-operator" not in helm("list", "-n", "nod-system", "-q").split():
        helm("install", "nod-operator", os.path.join(ROOT, "charts", "nod-operator"), "-n", "nod-system",
             "--create-namespace", "--wait", "--timeout", "180s", timeout=240)
    kubectl("apply", "-f", os.path.join(ROOT, "examples", "nodcluster.yaml"))
    running("example", 3)


def scenario_install():
    """helm install; kubectl apply examples/nodcluster.yaml; 3/3 Running; etcdctl through the client Service."""
    r = subprocess.run([os.path.join(BIN, "helm"), "install", "nod-operator",
                        os.path.join(ROOT, "charts", "nod-operator"), "-n", "nod-system",
                        "--create-namespace", "--wait", "--timeout", "180s"],
                       capture_output=True, text=True, env=ENV, timeout=240)
    if r.returncode != 0:
        raise Failed(f"helm install: {r.stderr.strip()}")
    # The API server warns about what it does not understand in the CRD.
    warnings = [line for line in r.stderr.splitlines() if "Warning" in line]
    if warnings:
        raise Failed(f"helm install printed warnings: {warnings}")
    dep = kjson("get", "deployment", "nod-operator", "-n", "nod-system")
    if dep["status"].get("readyReplicas") != 1:
        raise Failed(f"the operator's Deployment is not ready: {dep['status']}")
    say("operator installed and ready")
    kubectl("apply", "-f", os.path.join(ROOT, "examples", "nodcluster.yaml"))
    st = running("example", 3)
    say(f"example: {st['ready']} {st['phase']}, leader {st.get('leader')}")
    table = kubectl("get", "nodclusters")
    header, row = table.splitlines()[0].split(), table.splitlines()[1].split()
    if header[:5] != ["NAME", "READY", "LEADER", "PHASE", "AGE"]:
        raise Failed(f"kubectl get nodclusters columns: {header}")
    if row[0] != "example" or row[1] != "3/3" or not row[2].startswith("example-") or row[3] != "Running":
        raise Failed(f"kubectl get nodclusters row: {row}")
    say("kubectl get nodclusters: " + " ".join(row))
    svc = client_ip("example")
    etcdctl(f"{svc}:2379", "put", "hello", "world")
    got = etcdctl(f"{svc}:2379", "get", "hello", "--print-value-only").strip()
    if got != "world":
        raise Failed(f"etcdctl get hello through the client Service gave {got!r}")
    one_cluster("example", 3)
    say(f"etcdctl through the client Service {svc}:2379 wrote and read; one cluster of 3 voters")
    # The operator's own status writes (applied indexes move with every
    # write) must not trigger reconciles: under a write load it stays on
    # its idle timer (30 s).
    before = reconciles()
    with Writer("example", prefix="idle/"):
        time.sleep(20)
    after = reconciles()
    if after - before > 5:
        raise Failed(f"{after - before:.0f} reconciles in 20 s of writes to a cluster that matches its spec")
    say(f"{after - before:.0f} reconciles in 20 s of writes: status writes do not trigger the loop")


def reconciles():
    """nod_operator_reconciles_total of the operator pod, from its metrics port."""
    (pod,) = [p for p in kjson("get", "pods", "-n", "nod-system")["items"]
              if not p["metadata"].get("deletionTimestamp")]
    text = sh("curl", "-sf", f"http://{pod_ip(pod)}:8080/metrics")
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("nod_operator_reconciles_total{"))


def scenario_scale_up_from_one():
    """replicas: 1, then kubectl scale --replicas=3: one cluster of three voters, one cluster id."""
    ensure_example()
    apply(cluster_yaml("grow", 1))
    running("grow", 1)
    svc = client_ip("grow")
    etcdctl(f"{svc}:2379", "put", "before-scale", "1")
    (cid0, _, _), = one_cluster("grow", 1).values()
    kubectl("scale", "nodcluster/grow", "--replicas=3")
    running("grow", 3)
    seen = wait_until("three members of one cluster", lambda: one_cluster("grow", 3), timeout=120)
    cids = {v[0] for v in seen.values()}
    if cids != {cid0}:
        raise Failed(f"the cluster id changed on scale-up: {cid0} -> {cids}")
    for p in pods("grow").values():
        got = etcdctl(f"{pod_ip(p)}:2379", "get", "before-scale", "--print-value-only",
                      "--consistency=s").strip()
        if got != "1":
            raise Failed(f"{p['metadata']['name']} does not have the write made before scaling: {got!r}")
    say(f"3 voters, cluster id {cid0:x}, every member has the write made at 1 member")
    delete_cluster("grow")


def scenario_pod_deletion():
    """kubectl delete pod (leader, follower): back as the same member with its data; with its claim: a new member."""
    ensure_example()
    running("example", 3)
    svc = client_ip("example")
    etcdctl(f"{svc}:2379", "put", "survives", "pod-deletion")
    before = one_cluster("example", 3)
    ids = {name: v[1] for name, v in before.items()}
    leader_id = next(iter(before.values()))[2]
    leader = next(n for n, v in before.items() if v[1] == leader_id)
    follower = next(n for n in before if n != leader)
    for victim, role in ((leader, "leader"), (follower, "follower")):
        uid = pods("example")[victim]["metadata"]["uid"]
        kubectl("delete", "pod", victim, "--wait=true", "--timeout=120s")
        wait_until(f"{victim} to be recreated", lambda: pods("example").get(victim, {}).get(
            "metadata", {}).get("uid") not in (None, uid))
        running("example", 3)
        after = wait_until("one cluster of 3", lambda: one_cluster("example", 3), timeout=120)
        if after[victim][1] != ids[victim]:
            raise Failed(f"{victim} came back as member {after[victim][1]:x}, was {ids[victim]:x}")
        ip = pod_ip(pods("example")[victim])
        got = etcdctl(f"{ip}:2379", "get", "survives", "--print-value-only", "--consistency=s").strip()
        if got != "pod-deletion":
            raise Failed(f"{victim} lost its data: {got!r}")
        say(f"{role} {victim} deleted: back as member {ids[victim]:x} with its data")
    # Pod and claim together: the member comes back empty, as a new member.
    victim = follower
    uid = pods("example")[victim]["metadata"]["uid"]
    kubectl("delete", "pvc", f"data-{victim}", "--wait=false")
    kubectl("delete", "pod", victim, "--wait=true", "--timeout=120s")
    wait_until(f"{victim} to be recreated", lambda: pods("example").get(victim, {}).get(
        "metadata", {}).get("uid") not in (None, uid))
    running("example", 3)
    after = wait_until("one cluster of 3 with a new member", lambda: (
        lambda s: s if s[victim][1] != ids[victim] else None)(one_cluster("example", 3)), timeout=180)
    ms = members(pod_ip(pods("example")[victim]))
    if any(int(m["ID"]) == ids[victim] for m in ms):
        raise Failed(f"the stale member {ids[victim]:x} is still in the member list: {ms}")
    ip = pod_ip(pods("example")[victim])
    got = wait_until("the new member to catch up", lambda: etcdctl(
        f"{ip}:2379", "get", "survives", "--print-value-only", "--consistency=s").strip() == "pod-deletion")
    say(f"{victim} deleted with its claim: rejoined as new member {after[victim][1]:x}, "
        f"stale {ids[victim]:x} removed, data replicated")



class Background:
    """Runs `run` on a thread for the length of a `with` block; `run` loops
    until `self.stop` is set."""

    def __init__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def run(self):
        raise NotImplementedError


class Writer(Background):
    """A steady write load through the client Service: every write the
    cluster acknowledged (etcdctl exit 0) must be readable at the end."""

    def __init__(self, name, ns="default", prefix="load/", via=None):
        # via: (command prefix, endpoint, extra etcdctl flags) for a cluster
        # reached from inside a pod's network namespace, with TLS.
        self.prefix_cmd, self.svc, self.flags = via or ([], f"{client_ip(name, ns)}:2379", [])
        self.prefix = prefix
        self.acked = []
        self.failed = 0
        super().__init__()

    def run(self):
        n = 0
        while not self.stop.is_set():
            key = f"{self.prefix}{n:06d}"
            r = subprocess.run([*self.prefix_cmd, ETCDCTL, f"--endpoints={self.svc}", *self.flags,
                                "--command-timeout=5s", "--dial-timeout=2s", "put", key, str(n)],
                               capture_output=True, env=ENV)
            if r.returncode == 0:
                self.acked.append(key)
            else:
                self.failed += 1
            n += 1
            time.sleep(0.05)

    def check(self):
        keys = set(sh(*self.prefix_cmd, ETCDCTL, f"--endpoints={self.svc}", *self.flags, "--command-timeout=10s",
                      "get", "--prefix", self.prefix, "--keys-only").split())
        lost = [k for k in self.acked if k not in keys]
        if not self.acked:
            raise Failed("the writer got no write acknowledged")
        if lost:
            raise Failed(f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}")
        say(f"writes: {len(self.acked)} acknowledged, none lost ({self.failed} refused while members moved)")


def pdb(name, ns="default"):
    return kjson("get", "pdb", name, "-n", ns)


def claims(name, ns="default"):
    out = kjson("get", "pvc", "-n", ns)
    return sorted(c["metadata"]["name"] for c in out["items"]
                  if c["metadata"]["name"].startswith(f"data-{name}-"))


def evict(pod, ns="default"):
    """The Eviction API, as `kubectl drain` calls it: True if allowed."""
    body = json.dumps({"apiVersion": "policy/v1", "kind": "Eviction",
                       "metadata": {"name": pod, "namespace": ns}})
    r = subprocess.run([os.path.join(BIN, "kubectl"), "create", "--raw",
                        f"/api/v1/namespaces/{ns}/pods/{pod}/eviction", "-f", "-"],
                       input=body, capture_output=True, text=True, env=ENV)
    if r.returncode == 0:
        return True
    if "429" in r.stderr or "disruption budget" in r.stderr.lower() or "Cannot evict" in r.stderr:
        return False
    raise Failed(f"eviction of {pod}: {r.stderr.strip()}")


def scenario_scale_out_and_in():
    """3 -> 5 -> 3 under a steady write load: no acknowledged write lost, claims of removed members deleted, the PDB holds quorum."""
    ensure_example()
    running("example", 3)
    if pdb("example")["spec"].get("minAvailable") != 2:
        raise Failed(f"the PDB of 3 members: {pdb('example')['spec']}")
    with Writer("example") as w:
        kubectl("scale", "nodcluster/example", "--replicas=5")
        running("example", 5)
        wait_until("five voters", lambda: one_cluster("example", 5), timeout=180)
        spec = wait_until("the PDB of 5", lambda: pdb("example")["spec"].get("minAvailable") == 3 and pdb("example"))
        say(f"5/5 Running, 5 voters, PDB minAvailable {spec['spec']['minAvailable']}")
        kubectl("scale", "nodcluster/example", "--replicas=3")
        running("example", 3)
        wait_until("three voters", lambda: one_cluster("example", 3), timeout=180)
        time.sleep(2)
    w.check()
    wait_until("the removed members' claims to go",
               lambda: claims("example") == ["data-example-0", "data-example-1", "data-example-2"], timeout=120)
    wait_until("the PDB of 3", lambda: pdb("example")["spec"].get("minAvailable") == 2)
    say("back to 3 voters; claims data-example-3 and -4 deleted; PDB minAvailable 2")
    # A drain may take one member of three, never two.
    wait_until("the PDB to allow one disruption",
               lambda: pdb("example").get("status", {}).get("disruptionsAllowed") == 1)
    if not evict("example-2"):
        raise Failed("the PDB refused to evict one member of three")
    if evict("example-1"):
        raise Failed("the PDB let a second member of three be evicted: quorum gone")
    say("eviction of example-2 allowed, of example-1 refused while example-2 is away")
    running("example", 3)


HOLD = os.path.join(RUN, "hold")


def hold_down(ns, pod):
    """Stops a member's process and keeps the pod runner from restarting it."""
    os.makedirs(HOLD, exist_ok=True)
    open(os.path.join(HOLD, f"{ns}_{pod}"), "w").close()


def release(ns, pod):
    try:
        os.remove(os.path.join(HOLD, f"{ns}_{pod}"))
    except FileNotFoundError:
        pass


def scenario_quorum_loss():
    """Two of three members held down: status says quorum is lost; the cluster recovers when they return."""
    ensure_example()
    running("example", 3)
    svc = client_ip("example")
    etcdctl(f"{svc}:2379", "put", "before-quorum-loss", "1")
    victims = ["example-1", "example-2"]
    try:
        for v in victims:
            hold_down("default", v)
        st = wait_until("status to say quorum is lost", lambda: (lambda s: s if s.get("phase") == "QuorumLost"
                        else None)(status("example")), timeout=120)
        avail = next(c for c in st["conditions"] if c["type"] == "Available")
        if avail["status"] != "False":
            raise Failed(f"Available is {avail} with two of three members down")
        say(f"phase {st['phase']}, Available {avail['status']} ({avail['reason']}: {avail['message']})")
    finally:
        for v in victims:
            release("default", v)
    running("example", 3)
    one_cluster("example", 3)
    got = etcdctl(f"{svc}:2379", "get", "before-quorum-loss", "--print-value-only").strip()
    if got != "1":
        raise Failed(f"after recovery the key reads {got!r}")
    etcdctl(f"{svc}:2379", "put", "after-quorum-loss", "1")
    say("members back: 3/3 Running, data intact, writes accepted")


def scenario_quorum_recovery():
    """Two of three members lost for good: nod.io/recover-quorum forces the survivor, the others rejoin empty one at a time; data and cluster id kept."""
    ensure_example()
    running("example", 3)
    svc = client_ip("example")
    before = status("example")
    etcdctl(f"{svc}:2379", "put", "before-recovery", "1")
    victims = ["example-1", "example-2"]
    try:
        for v in victims:
            hold_down("default", v)
        wait_until("QuorumLost", lambda: status("example").get("phase") == "QuorumLost", timeout=120)
        # A wrong id is refused.
        kubectl("annotate", "nodcluster/example", "nod.io/recover-quorum=not-this-one")
        wait_until("the refusal in SpecApplied", lambda: condition_mentioning("example", "RecoveryRefused"),
                   timeout=60)
        if status("example").get("recovery"):
            raise Failed("a recovery started for another cluster id")
        kubectl("annotate", "--overwrite", "nodcluster/example",
                f"nod.io/recover-quorum={before['clusterId']}")
        st = wait_until("the survivor to lead alone", lambda: (lambda s: s.get("recovery", {}).get("stage")
                        == "Rejoining" and s)(status("example")), timeout=180)
        if st["recovery"]["survivor"] != "example-0":
            raise Failed(f"survivor {st['recovery']['survivor']}, but only example-0 answered")
        ip = pod_ip(pods("example")["example-0"])
        got = etcdctl(f"{ip}:2379", "get", "before-recovery", "--print-value-only").strip()
        if got != "1":
            raise Failed(f"the survivor lost before-recovery: {got!r}")
        etcdctl(f"{ip}:2379", "put", "during-recovery", "1")
        say(f"example-0 leads alone at raft index {st['recovery']['raftIndex']}; writes accepted")
    finally:
        # Replacement machines: the held pods may run again (empty once
        # the operator has wiped them).
        for v in victims:
            release("default", v)
    wait_until("the recovery to finish", lambda: not status("example").get("recovery")
               and status("example").get("phase") == "Running", timeout=300)
    running("example", 3)
    one_cluster("example", 3)
    after = status("example")
    if after.get("clusterId") != before["clusterId"]:
        raise Failed(f"cluster id changed: {before['clusterId']} -> {after.get('clusterId')}")
    if "nod.io/recover-quorum" in nodcluster("example")["metadata"].get("annotations", {}):
        raise Failed("the annotation was not removed")
    for k in ("before-recovery", "during-recovery"):
        got = etcdctl(f"{svc}:2379", "get", k, "--print-value-only").strip()
        if got != "1":
            raise Failed(f"{k} after recovery: {got!r}")
    for reason in ("RecoveryStarted", "RecoveryForced", "RecoveryRejoin", "Recovered"):
        if not events_of("example", reason):
            raise Failed(f"no {reason} Event")
    say("3/3 Running again, same cluster id, every key kept")


def scenario_deletion():
    """Deleting a NodCluster removes its objects and follows storage.claimPolicy; no finalizer wedges it without the operator."""
    ensure_example()
    apply(cluster_yaml("keep", 1))
    apply(cluster_yaml("drop", 1, storage="{size: 1Gi, claimPolicy: Delete}"))
    running("keep", 1)
    running("drop", 1)
    kubectl("delete", "nodcluster", "keep", "--wait=true", "--timeout=120s")
    kubectl("delete", "nodcluster", "drop", "--wait=true", "--timeout=120s")
    for name in ("keep", "drop"):
        wait_until(f"the objects of {name} to go", lambda: not kubectl(
            "get", "statefulset,service,pdb,serviceaccount,pods", "-l", f"app.kubernetes.io/instance={name}",
            "-o", "name").strip(), timeout=120)
    if claims("keep") != ["data-keep-0"]:
        raise Failed(f"claimPolicy Retain: claims of keep are {claims('keep')}")
    wait_until("drop's claims to be deleted", lambda: claims("drop") == [], timeout=120)
    say("objects gone; keep's claim retained, drop's deleted")
    kubectl("delete", "pvc", "data-keep-0")
    # With the operator gone, deletion must still complete.
    kubectl("scale", "deployment/nod-operator", "-n", "nod-system", "--replicas=0")
    try:
        wait_until("the operator to stop", lambda: not kubectl(
            "get", "pods", "-n", "nod-system", "-o", "name").strip(), timeout=120)
        apply(cluster_yaml("orphan", 1))
        time.sleep(2)
        kubectl("delete", "nodcluster", "orphan", "--wait=true", "--timeout=30s")
        say("a NodCluster deleted while no operator runs is gone at once")
    finally:
        kubectl("scale", "deployment/nod-operator", "-n", "nod-system", "--replicas=1")
        kubectl("rollout", "status", "deployment/nod-operator", "-n", "nod-system", "--timeout=120s")


def member_args(pod):
    return pod["spec"]["containers"][0].get("args", [])


class Watcher(Background):
    """Samples the member pods while a roll runs: how many are unavailable
    at once, and the order in which pods are replaced."""

    def __init__(self, name, n):
        self.name, self.n = name, n
        self.max_down = 0
        self.replaced = []  # pod names, in the order their uid changed
        self.leader = None  # the leader status shows, as last sampled
        self.leader_at = {}  # pod name -> the leader when its replacement was seen
        self.uids = {k: v["metadata"]["uid"] for k, v in pods(name).items()}
        super().__init__()

    def run(self):
        while not self.stop.is_set():
            try:
                ps = pods(self.name)
                leader = status(self.name).get("leader")
                ready = sum(1 for p in ps.values() if not p["metadata"].get("deletionTimestamp") and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions", [])))
                self.max_down = max(self.max_down, self.n - ready)
                for k, p in ps.items():
                    uid = p["metadata"]["uid"]
                    if self.uids.get(k) != uid:
                        self.uids[k] = uid
                        if k not in self.replaced:
                            self.replaced.append(k)
                            self.leader_at[k] = self.leader
                self.leader = leader
            except Exception:
                pass
            time.sleep(0.3)


def leader_pod(name):
    st = status(name)
    return st.get("leader")


def roll(name, patch, check_pod, what):
    """Applies a spec change that must reach every pod one at a time, leader last."""
    running(name, 3)
    leader = leader_pod(name)
    with Writer(name, prefix=f"roll-{int(time.time())}/") as w, Watcher(name, 3) as watch:
        kubectl("patch", f"nodcluster/{name}", "--type", "merge", "-p", json.dumps(patch))
        wait_until(f"every pod to run {what}", lambda: len(pods(name)) == 3 and all(
            check_pod(p) for p in pods(name).values()), timeout=420)
        running(name, 3)
        time.sleep(1)
    w.check()
    if sorted(watch.replaced) != sorted(pods(name)):
        raise Failed(f"pods replaced: {watch.replaced}")
    if watch.max_down > 1:
        raise Failed(f"{watch.max_down} members were unavailable at once during the roll")
    # Leadership may move by itself during a roll on a busy machine: the pod
    # rolled last must be the one that led while the others were rolled.
    leading = watch.leader_at.get(watch.replaced[-2]) or leader
    if watch.replaced[-1] != leading:
        raise Failed(f"the leader {leading} was not rolled last: order {watch.replaced}, "
                     f"leaders seen {watch.leader_at}")
    say(f"{what}: rolled {' -> '.join(watch.replaced)} (leader {leader} last), "
        f"at most {watch.max_down} member down at once")


def scenario_rolling_changes():
    """Rolling changes one pod at a time, leader last, writes continuing: an image change and a non-image change."""
    ensure_example()
    roll("example", {"spec": {"version": "0.2.0"}},
         lambda p: p["spec"]["containers"][0]["image"].endswith(":0.2.0"), "image :0.2.0")
    roll("example", {"spec": {"raft": {"heartbeatIntervalMs": 150, "electionTimeoutMs": 1500},
                              "snapshotCount": 20000,
                              "pod": {"tolerations": [{"key": "dedicated", "operator": "Equal",
                                                       "value": "nod", "effect": "NoSchedule"}]}}},
         lambda p: "--election-timeout=1500" in member_args(p) and "--snapshot-count=20000" in member_args(p)
         and any(t.get("key") == "dedicated" for t in p["spec"].get("tolerations", [])),
         "raft timings, snapshot count and a toleration")
    one_cluster("example", 3)


def refused(args, input=None):
    """A kubectl call the API server must refuse; returns its message."""
    r = subprocess.run([os.path.join(BIN, "kubectl"), *args], input=input, capture_output=True,
                       text=True, env=ENV)
    if r.returncode == 0:
        raise Failed(f"kubectl {' '.join(args)} was accepted")
    return r.stderr.strip()


def condition_mentioning(name, word):
    for c in status(name).get("conditions", []):
        if word.lower() in (c.get("message", "") + c.get("reason", "")).lower():
            return c
    return None


def scenario_bad_specs():
    """Impossible specs are refused by the CRD's rules or shown in status; the running cluster keeps working."""
    ensure_example()
    running("example", 3)
    svc = client_ip("example")
    msg = refused(["patch", "nodcluster/example", "--type", "merge", "-p",
                   '{"spec":{"storage":{"storageClassName":"other"}}}'])
    if "immutable" not in msg:
        raise Failed(f"a changed storage class was refused for another reason: {msg}")
    say(f"storage class change refused: {msg.splitlines()[-1][:160]}")
    long_name = "n" * 60
    msg = refused(["apply", "-f", "-"], input=cluster_yaml(long_name, 1))
    say(f"a {len(long_name)}-character name refused: {msg.splitlines()[-1][:160]}")
    # A size the storage class cannot expand: shown in status, nothing else stops.
    apply("""apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fixed}
provisioner: nod.io/local-directory
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: false
""")
    apply(cluster_yaml("fixed", 1, storage="{size: 1Gi, storageClassName: fixed}"))
    running("fixed", 1)
    apply(cluster_yaml("fixed", 1, storage="{size: 2Gi, storageClassName: fixed}"))
    c = wait_until("a condition about the size", lambda: condition_mentioning("fixed", "expan"), timeout=120)
    say(f"size change on a class without expansion: {c['type']}={c['status']} {c['reason']}: {c['message'][:120]}")
    ip = client_ip("fixed")
    etcdctl(f"{ip}:2379", "put", "still", "working")
    delete_cluster("fixed")
    kubectl("delete", "pvc", "data-fixed-0", "--ignore-not-found")
    # An even size is allowed, and flagged.
    apply(cluster_yaml("even", 2))
    c = wait_until("a condition about the even size", lambda: condition_mentioning("even", "odd"), timeout=120)
    say(f"2 members: {c['type']}={c['status']} {c['reason']}: {c['message']}")
    delete_cluster("even")
    kubectl("delete", "pvc", "data-even-0", "data-even-1", "--ignore-not-found")
    # A size the class can expand: the claims grow.
    kubectl("patch", "nodcluster/example", "--type", "merge", "-p", '{"spec":{"storage":{"size":"20Gi"}}}')
    wait_until("the claims to be expanded", lambda: all(
        c["status"].get("capacity", {}).get("storage") == "20Gi"
        for c in kjson("get", "pvc", "-l", "app.kubernetes.io/instance=example")["items"]), timeout=120)
    say("size change on an expandable class: every claim is 20Gi")
    # A ServiceMonitor without the Prometheus Operator's CRDs.
    kubectl("patch", "nodcluster/example", "--type", "merge", "-p", '{"spec":{"metrics":{"serviceMonitor":true}}}')
    c = wait_until("a condition about the ServiceMonitor",
                   lambda: condition_mentioning("example", "ServiceMonitor"), timeout=120)
    say(f"serviceMonitor without its CRD: {c['type']}={c['status']} {c['reason']}: {c['message'][:120]}")
    gen = nodcluster("example")["metadata"]["generation"]
    wait_until("status to follow the spec", lambda: status("example").get("observedGeneration") == gen)
    etcdctl(f"{svc}:2379", "put", "still", "working")
    kubectl("patch", "nodcluster/example", "--type", "merge", "-p", '{"spec":{"metrics":{"serviceMonitor":false}}}')
    wait_until("the condition to clear", lambda: condition_mentioning("example", "ServiceMonitor") is None
               or condition_mentioning("example", "ServiceMonitor")["status"] == "False", timeout=120)
    running("example", 3)


def operator_pods():
    out = kjson("get", "pods", "-n", "nod-system", "-l", "app.kubernetes.io/name=nod-operator")
    return {p["metadata"]["name"]: p for p in out["items"] if not p["metadata"].get("deletionTimestamp")}


def operator_log(pod):
    uid = pod["metadata"]["uid"][:8]
    path = os.path.join(RUN, "pods", f"nod-system_{pod['metadata']['name']}_{uid}", "container.log")
    try:
        return open(path, errors="replace").read()
    except FileNotFoundError:
        return ""


def scenario_operator_restart():
    """Two operator replicas never act at once; the operator restarted in the middle of a scale-down resumes safely."""
    ensure_example()
    helm("upgrade", "nod-operator", os.path.join(ROOT, "charts", "nod-operator"), "-n", "nod-system",
         "--reuse-values", "--set", "replicaCount=2", "--wait", "--timeout", "180s", timeout=240)
    ops = wait_until("two operator pods", lambda: (lambda o: o if len(o) == 2 else None)(operator_pods()))
    lease = kjson("get", "lease", "nod-operator", "-n", "nod-system")
    holder = lease["spec"]["holderIdentity"]
    if holder not in ops:
        raise Failed(f"the Lease is held by {holder!r}, not one of {sorted(ops)}")
    standby = next(n for n in ops if n != holder)
    wait_until(f"{standby} to say it waits", lambda: "another replica leads" in operator_log(ops[standby]))
    if "leading" in [json.loads(line).get("fields", {}).get("message") for line in
                     operator_log(ops[standby]).splitlines() if line.startswith("{")]:
        raise Failed(f"the standby {standby} says it leads too")
    say(f"lease held by {holder}; {standby} waits")
    running("example", 3)
    kubectl("scale", "nodcluster/example", "--replicas=5")
    running("example", 5)
    with Writer("example", prefix="restart/") as w:
        kubectl("scale", "nodcluster/example", "--replicas=3")
        wait_until("the scale-down to begin", lambda: status("example").get("removedMembers") or
                   kjson("get", "statefulset", "example")["spec"]["replicas"] < 5, interval=0.2)
        kubectl("delete", "pod", holder, "-n", "nod-system", "--wait=false")
        say(f"deleted the leading operator {holder} in the middle of the scale-down")
        running("example", 3)
        wait_until("three voters", lambda: one_cluster("example", 3), timeout=180)
    w.check()
    wait_until("the removed members' claims to go",
               lambda: claims("example") == ["data-example-0", "data-example-1", "data-example-2"], timeout=120)
    lease = kjson("get", "lease", "nod-operator", "-n", "nod-system")
    say(f"scale-down finished under {lease['spec']['holderIdentity']}; claims of example-3 and -4 deleted")
    helm("upgrade", "nod-operator", os.path.join(ROOT, "charts", "nod-operator"), "-n", "nod-system",
         "--reuse-values", "--set", "replicaCount=1", "--wait", "--timeout", "180s", timeout=240)


def netns_of(ip):
    """The network namespace the pod runner gave the pod with this IP."""
    for line in sh("ip", "netns", "list").splitlines():
        name = line.split()[0]
        if name.startswith("nodk8s-") and f"inet {ip}/" in sh("ip", "-n", name, "-4", "addr", check=False):
            return name
    raise Failed(f"no network namespace holds {ip}")


def reaches(netns, ip, port):
    """Whether a TCP connection from inside netns to ip:port opens (3 s)."""
    r = subprocess.run(["ip", "netns", "exec", netns, "timeout", "3", "bash", "-c",
                        f"exec 3<>/dev/tcp/{ip}/{port}"], capture_output=True)
    return r.returncode == 0


def secret_files(name, d, ns="default"):
    """Writes a Secret's keys as files in d; returns {key: path}."""
    import base64
    data = kjson("get", "secret", name, "-n", ns)["data"]
    out = {}
    for k, v in data.items():
        path = os.path.join(d, f"{name}-{k}")
        with open(path, "wb") as f:
            f.write(base64.b64decode(v))
        os.chmod(path, 0o600)
        out[k] = path
    return out


def served_cert(netns, host, port=2379):
    """The certificate a member serves (PEM), fetched from inside netns."""
    r = subprocess.run(["ip", "netns", "exec", netns, "openssl", "s_client", "-connect", f"{host}:{port}",
                        "-servername", host], input="", capture_output=True, text=True, timeout=20)
    text = r.stdout
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----")
    if begin < 0 or end < 0:
        raise Failed(f"{host}:{port} presented no certificate: {r.stderr[-300:]}")
    return text[begin:end + len("-----END CERTIFICATE-----")]


def scenario_security():
    """TLS auto + auth + NetworkPolicy: mTLS only, users by certificate, members only on peer ports, renewal one member at a time."""
    import tempfile
    ensure_example()
    d = tempfile.mkdtemp(prefix="nod-e2e-tls-")
    apply(kubectl("create", "secret", "generic", "secure-root", "--from-literal=password=s3cret-root",
                  "--dry-run=client", "-o", "yaml"))
    apply(cluster_yaml("secure", 3, extra="""  tls:
    mode: auto
    clientUsers: [app]
  auth:
    rootPasswordSecret: {name: secure-root}
  networkPolicy:
    clientNamespaceSelector: {matchLabels: {nod-client: "yes"}}
"""))
    running("secure", 3)
    st = wait_until("auth to be turned on", lambda: (lambda s: s if s.get("authEnabled") else None)(status("secure")))
    if st.get("tls", {}).get("mode") != "auto" or not st["tls"].get("notAfter"):
        raise Failed(f"status.tls: {st.get('tls')}")
    say(f"secure: 3/3 Running with TLS (certificates until {st['tls']['notAfter']}) and auth on")
    app = secret_files("secure-client-app", d)
    root = secret_files("secure-operator-tls", d)
    ps = pods("secure")
    member_ns = {n: netns_of(pod_ip(p)) for n, p in ps.items()}
    (op_pod,) = operator_pods().values()
    op_ns = netns_of(pod_ip(op_pod))
    ex_ns = netns_of(pod_ip(next(iter(pods("example").values()))))
    hosts = {n: f"{n}.secure-peers.default.svc" for n in ps}
    eps = ",".join(f"https://{h}:2379" for h in hosts.values())

    def ctl(*args, certs=app, ns=op_ns, user=None, check=True, endpoints=eps):
        flags = [f"--cacert={certs['ca.crt']}", f"--cert={certs['tls.crt']}", f"--key={certs['tls.key']}"] \
            if certs else [f"--cacert={app['ca.crt']}"]
        if user:
            flags.append(f"--user={user}")
        return sh("ip", "netns", "exec", ns, ETCDCTL, f"--endpoints={endpoints}", *flags,
                  "--command-timeout=10s", "--dial-timeout=5s", *args, check=check)

    def denied(*args, **kw):
        try:
            out = ctl(*args, **kw)
        except Failed as e:
            return str(e)
        raise Failed(f"etcdctl {' '.join(args)} was allowed: {out!r}")

    # Root by password; the operator's certificate is root's too.
    ctl("put", "greeting", "hello", certs=app, user="root:s3cret-root")
    if ctl("get", "greeting", "--print-value-only", certs=root).strip() != "hello":
        raise Failed("root's certificate does not read what root wrote")
    # "app" by its certificate: nothing until root grants it a role.
    msg = denied("put", "app/1", "x")
    if "permission denied" not in msg and "user name not found" not in msg:
        raise Failed(f"app without a role: {msg}")
    for args in (("user", "add", "app:unused-pw"), ("role", "add", "app-rw"),
                 ("role", "grant-permission", "app-rw", "--prefix=true", "readwrite", "app/"),
                 ("user", "grant-role", "app", "app-rw")):
        ctl(*args, certs=root)
    ctl("put", "app/1", "x")
    msg = denied("put", "other", "x")
    if "permission denied" not in msg:
        raise Failed(f"app outside its prefix: {msg}")
    say("auth: root by password and by certificate; app by its certificate, inside app/ only")
    # No certificate, or plain TCP: refused.
    denied("get", "greeting", certs=None, user="root:s3cret-root")
    denied("get", "greeting", certs=app, user="root:s3cret-root",
           endpoints=",".join(f"http://{h}:2379" for h in hosts.values()))
    say("refused without a client certificate and over plain TCP")

    # NetworkPolicy: members from members; the client port from selected
    # namespaces and the operator's; others not at all.
    ip0 = pod_ip(ps["secure-0"])
    other = member_ns["secure-1"]
    checks = [(other, 2380, True), (other, 2379, True), (op_ns, 2379, True), (op_ns, 2380, False),
              (ex_ns, 2379, False), (ex_ns, 2380, False)]
    wrong = [(ns, port, want) for ns, port, want in checks if reaches(ns, ip0, port) != want]
    if wrong:
        raise Failed(f"NetworkPolicy: these reached secure-0 otherwise than expected: {wrong}")
    say("NetworkPolicy: peer port from members only; client port from members and the operator, not from 'default'")

    # Renewal on request: one member at a time, the next once the last
    # serves its new certificate; writes go on.
    before = {n: served_cert(op_ns, h) for n, h in hosts.items()}
    via = (["ip", "netns", "exec", op_ns], "https://secure.default.svc:2379",
           [f"--cacert={root['ca.crt']}", f"--cert={root['tls.crt']}", f"--key={root['tls.key']}"])
    with Writer("secure", prefix="renew/", via=via) as w:
        kubectl("annotate", "nodcluster/secure", "nod.io/renew-certificates=r1")
        wait_until("every member renewed", lambda: status("secure").get("tls", {}).get("renewedFor") == "r1",
                   timeout=420)
    w.check()
    after = {n: served_cert(op_ns, h) for n, h in hosts.items()}
    same = [n for n in hosts if before[n] == after[n]]
    if same:
        raise Failed(f"still serving the old certificate after renewal: {same}")
    # The operator logs every step it records as an Event (the Events
    # themselves are folded into one series per reason).
    import re
    steps = []
    for line in operator_log(op_pod).splitlines():
        try:
            f = json.loads(line).get("fields", {})
        except ValueError:
            continue
        if f.get("cluster") == "secure" and f.get("reason") in ("RenewingCertificate", "CertificateRenewed"):
            steps.append((f["reason"], re.search(r"secure-\d+", f["message"]).group(0)))
    # Each member renewed, then served, before the next one starts.
    pairs = [steps[i:i + 2] for i in range(0, len(steps), 2)]
    if len(steps) != 6 or sorted(p[0][1] for p in pairs) != sorted(hosts) or any(
            [r for r, _ in p] != ["RenewingCertificate", "CertificateRenewed"] or p[0][1] != p[1][1]
            for p in pairs):
        raise Failed(f"renewal was not one member at a time: {steps}")
    say(f"renewed one member at a time ({len(w.acked)} writes acknowledged meanwhile, none lost)")
    one = ctl("member", "list", "-w", "json", certs=root)
    if len([m for m in json.loads(one)["members"] if not m.get("isLearner")]) != 3:
        raise Failed(f"after renewal: {one}")
    delete_cluster("secure")
    kubectl("delete", "secret", "secure-root", "--ignore-not-found")
    kubectl("delete", "pvc", "-l", "app.kubernetes.io/instance=secure", "--ignore-not-found")
    wait_until("the cluster's Secrets to go with it", lambda: not [
        s for s in kjson("get", "secrets")["items"] if s["metadata"]["name"].startswith("secure-")], timeout=120)
    say("deleted: its CA, certificates and gossip key went with it")


# ---- scheduled backups (spec.backup) to an S3-compatible server

MOTO = os.path.join(os.path.expanduser("~"), ".cache", "nod", "venv", "bin", "moto_server")
# On the node's bridge address: every pod reaches it (the node is always
# allowed), and it belongs to the harness's own bridge.
S3_HOST, S3_PORT = "10.214.0.1", 9000


class S3:
    """moto in server mode, started and stopped by the scenario."""

    def __init__(self):
        self.proc = None
        self.log = os.path.join(RUN, "logs", "moto.log")

    def start(self):
        self.proc = subprocess.Popen([MOTO, "-H", S3_HOST, "-p", str(S3_PORT)],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_until("moto to listen", lambda: self.client().list_buckets() is not None, timeout=60)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @staticmethod
    def client():
        import boto3  # moto[server] brings it, in the venv this script runs in
        return boto3.client("s3", endpoint_url=f"http://{S3_HOST}:{S3_PORT}", region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def keys(self, bucket, prefix):
        out = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for o in out.get("Contents", [])]


def events_of(name, reason):
    out = kjson("get", "events.events.k8s.io", "-n", "default")
    return [e for e in out["items"]
            if e.get("regarding", {}).get("name") == name and e.get("reason") == reason]


def s3_destination(bucket):
    """The `destination:` block (under backup or restore) naming moto's bucket."""
    return f"""    destination:
      s3:
        bucket: {bucket}
        prefix: e2e
        endpoint: http://{S3_HOST}:{S3_PORT}
        credentialsSecret: {{name: s3-keys}}
"""


def hashkv(endpoint, revision):
    out = json.loads(etcdctl(endpoint, "endpoint", "hashkv", f"--rev={revision}", "-w", "json"))
    return out[0]["HashKV"]["hash"]


def restore_into_a_new_cluster(source, bucket, st, svc):
    """A new 3-member NodCluster restored from the source's backups at a fixed revision."""
    revision = int(st["backup"]["reachedRevision"])
    want = hashkv(f"{svc}:2379", revision)
    values = {f"k{i}": etcdctl(f"{svc}:2379", "get", f"k{i}", "--print-value-only", f"--rev={revision}").strip()
              for i in range(20)}
    apply(cluster_yaml("restored", 3, extra=f"""  restore:
    revision: {revision}
    sourceClusterId: "{st['clusterId']}"
{s3_destination(bucket)}"""))
    rst = running("restored", 3)
    if rst.get("clusterId") in (None, st["clusterId"]):
        raise Failed(f"the restored cluster's id {rst.get('clusterId')} is not a new one ({st['clusterId']})")
    if rst.get("restoredRevision") != revision:
        raise Failed(f"status.restoredRevision {rst.get('restoredRevision')} != {revision}")
    one_cluster("restored", 3)
    for pname, p in pods("restored").items():
        got = hashkv(f"{pod_ip(p)}:2379", revision)
        if got != want:
            raise Failed(f"{pname}: HashKV at {revision} is {got}, the source's is {want}")
    rsvc = client_ip("restored")
    for k, v in values.items():
        got = etcdctl(f"{rsvc}:2379", "get", k, "--print-value-only").strip()
        if got != v:
            raise Failed(f"restored {k} = {got!r}, the source had {v!r} at {revision}")
    if not events_of("restored", "Restored"):
        raise Failed("no Restored Event")
    out = json.loads(etcdctl(f"{rsvc}:2379", "put", "after-restore", "x", "-w", "json"))
    if int(out["header"]["revision"]) != revision + 1:
        raise Failed(f"the first write after the restore got revision {out['header']['revision']}, not {revision + 1}")
    say(f"restored: 3 members at revision {revision}, HashKV {want} on each, cluster {rst['clusterId']}")
    delete_cluster("restored")


def hibernate_and_resume(name, svc):
    """replicas 0: a backup first, the pods go, the claims stay; replicas 1: the same cluster and data."""
    before = status(name)
    fulls = before["backup"]["lastSuccessful"]["chain"]
    kubectl("patch", f"nodcluster/{name}", "--type", "merge", "-p", '{"spec":{"replicas":0}}')
    st = wait_until("Hibernated", lambda: (lambda s: s.get("phase") == "Hibernated" and s)(status(name)),
                    timeout=180)
    if st["backup"]["lastSuccessful"]["chain"] == fulls:
        raise Failed("no new full backup was taken before hibernating")
    if pods(name):
        raise Failed(f"pods left after hibernating: {list(pods(name))}")
    if not claims(name):
        raise Failed("the claims went with the pods")
    if st.get("hibernatedReplicas") != 1:
        raise Failed(f"hibernatedReplicas: {st.get('hibernatedReplicas')}")
    say(f"hibernated after backup {st['backup']['lastSuccessful']['chain']}; claims {claims(name)} kept")
    kubectl("patch", f"nodcluster/{name}", "--type", "merge", "-p", '{"spec":{"replicas":1}}')
    st = running(name, 1)
    if st.get("clusterId") != before["clusterId"] or st.get("hibernatedReplicas"):
        raise Failed(f"resumed as {st.get('clusterId')} (was {before['clusterId']}), {st}")
    got = etcdctl(f"{client_ip(name)}:2379", "get", "k19", "--print-value-only").strip()
    if got != "v19":
        raise Failed(f"k19 after resuming: {got!r}")
    say("resumed: the same cluster id and keys")


def scenario_backup():
    """spec.backup to S3 (moto): a scheduled full and segments in status, verified with nod backup verify; an on-demand backup by annotation; a new 3-member NodCluster restored at a revision (HashKV equal); hibernate (backup first) and resume; S3 stopped: BackupSucceeded False with an Event."""
    ensure_example()
    s3 = S3()
    name, bucket = "backed", "nod-backups"
    try:
        s3.start()
        s3.client().create_bucket(Bucket=bucket)
        apply(kubectl("create", "secret", "generic", "s3-keys", "--from-literal=AWS_ACCESS_KEY_ID=testing",
                      "--from-literal=AWS_SECRET_ACCESS_KEY=testing", "--dry-run=client", "-o", "yaml"))
        apply(cluster_yaml(name, 1, extra=f"""  backup:
    schedule: "*/1 * * * *"
    segmentMaxAgeSeconds: 5
    retention: {{count: 3}}
{s3_destination(bucket)}"""))
        running(name, 1)
        svc = client_ip(name)
        for i in range(10):
            etcdctl(f"{svc}:2379", "put", f"k{i}", f"v{i}")
        # The agent's first full, then changes after it: segments.
        wait_until("the first full backup", lambda: status(name).get("backup", {}).get("lastSuccessful"),
                   timeout=180)
        revision = 0
        for i in range(10, 20):
            out = json.loads(etcdctl(f"{svc}:2379", "put", f"k{i}", f"v{i}", "-w", "json"))
            revision = int(out["header"]["revision"])
        say(f"20 keys written, up to revision {revision}")

        def backed_up():
            st = status(name)
            b = st.get("backup", {})
            ok = next((c for c in st.get("conditions", []) if c["type"] == "BackupSucceeded"), None)
            return (b.get("lastSuccessful") and int(b.get("reachedRevision", 0)) >= revision
                    and ok and ok["status"] == "True" and st)
        st = wait_until(f"status.backup to reach revision {revision}", backed_up, timeout=180)
        b = st["backup"]
        say(f"last full {b['lastSuccessful']['chain']} at revision {b['lastSuccessful']['revision']}, "
            f"reaching {b['reachedRevision']}; next full {b.get('nextScheduled')}")
        nxt = b.get("nextScheduled")
        import calendar
        if not nxt or calendar.timegm(time.strptime(nxt, "%Y-%m-%dT%H:%M:%SZ")) < time.time() - 5:
            raise Failed(f"nextScheduled {nxt!r} is not in the future")
        stale = next(c for c in st["conditions"] if c["type"] == "BackupStale")
        if stale["status"] != "False":
            raise Failed(f"BackupStale: {stale}")
        keys = s3.keys(bucket, "e2e/")
        chain = b["lastSuccessful"]["chain"]
        if f"e2e/{chain}/manifest.json" not in keys or f"e2e/{chain}/full.db.zst" not in keys:
            raise Failed(f"chain {chain} is not in the bucket: {keys}")
        if not any(k.endswith(".nseg") for k in keys):
            raise Failed(f"no incremental segment in the bucket: {keys}")
        # The backup restores: read whole, every checksum and link.
        env = dict(ENV, AWS_ENDPOINT_URL=f"http://{S3_HOST}:{S3_PORT}", AWS_ALLOW_HTTP="true",
                   AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        nod = os.path.join(os.environ["NOD_BIN_DIR"], "nod")
        r = subprocess.run([nod, "backup", "verify", "--dest", f"s3://{bucket}/e2e"], env=env,
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise Failed(f"nod backup verify: {r.stderr or r.stdout}")
        say(f"nod backup verify: {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else 'ok'}")
        if not events_of(name, "BackupSucceeded"):
            raise Failed("no BackupSucceeded Event")

        # On demand: an annotation value asks for one full now.
        kubectl("annotate", f"nodcluster/{name}", "nod.io/backup-now=e2e-1")
        taken = wait_until("the on-demand backup", lambda: status(name).get("backup", {})
                           .get("onDemand", {}).get("taken"), timeout=120)
        if f"e2e/{taken['chain']}/manifest.json" not in s3.keys(bucket, "e2e/"):
            raise Failed(f"the on-demand backup {taken['chain']} is not in the bucket")
        if not events_of(name, "BackupTaken"):
            raise Failed("no BackupTaken Event")
        say(f"on demand: {taken['chain']} at revision {taken['revision']}")

        restore_into_a_new_cluster(name, bucket, st, svc)
        hibernate_and_resume(name, svc)

        # Backing up again after the resume, then S3 goes away: the next
        # segment (or full) fails, and status says so.
        def succeeding():
            ok = next((c for c in status(name).get("conditions", []) if c["type"] == "BackupSucceeded"), None)
            return ok and ok["status"] == "True"
        wait_until("BackupSucceeded after resuming", succeeding, timeout=150)
        stopped_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        s3.stop()
        for i in range(5):
            etcdctl(f"{svc}:2379", "put", f"after{i}", "x")

        def failing():
            st = status(name)
            ok = next((c for c in st.get("conditions", []) if c["type"] == "BackupSucceeded"), None)
            failure = st.get("backup", {}).get("lastFailure", {})
            # A failure since S3 stopped (ISO times compare as strings).
            return (ok and ok["status"] == "False" and ok["reason"] == "BackupFailed"
                    and failure.get("time", "") >= stopped_at and ok)
        c = wait_until("BackupSucceeded to turn False", failing, timeout=150)
        say(f"BackupSucceeded False: {c['message'][:120]}")
        wait_until("a BackupFailed Event", lambda: events_of(name, "BackupFailed"), timeout=60)
    finally:
        s3.stop()
    delete_cluster(name)
    if kjson("get", "deployments", "-n", "default", "-l", f"app.kubernetes.io/instance={name}")["items"]:
        wait_until("the backup agent to go with its cluster", lambda: not kjson(
            "get", "deployments", "-n", "default", "-l", f"app.kubernetes.io/instance={name}")["items"], timeout=120)
    kubectl("delete", "secret", "s3-keys", "--ignore-not-found")


# The numbering (scenario 1 to 9). CI runs CORE (--core) unless NOD_K8S_E2E=full.
SCENARIOS = [
    ("install", scenario_install),
    ("scale-up-from-one", scenario_scale_up_from_one),
    ("scale-out-and-in", scenario_scale_out_and_in),
    ("pod-deletion", scenario_pod_deletion),
    ("rolling-changes", scenario_rolling_changes),
    ("bad-specs", scenario_bad_specs),
    ("quorum-loss", scenario_quorum_loss),
    ("operator-restart", scenario_operator_restart),
    ("deletion", scenario_deletion),
    ("security", scenario_security),
    ("backup", scenario_backup),
    ("quorum-recovery", scenario_quorum_recovery),
]
CORE = ["install", "scale-up-from-one", "pod-deletion", "security", "quorum-recovery"]


def dump_state():
    """What a failing scenario leaves for the reader."""
    for args in (("get", "nodclusters,statefulsets,pods,pvc", "-A", "-o", "wide"),
                 ("get", "nodcluster", "-A", "-o", "yaml")):
        try:
            print(kubectl(*args, check=False), flush=True)
        except Exception:
            pass
    print(f"    (logs: {RUN}/logs, {RUN}/pods/*/container.log)", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="")
    p.add_argument("--core", action="store_true", help="only " + ", ".join(CORE) + " (what CI runs)")
    p.add_argument("--list", action="store_true")
    args = p.parse_args()
    if args.list:
        for name, fn in SCENARIOS:
            print(f"{name}: {fn.__doc__}")
        return 0
    only = [s for s in args.only.split(",") if s]
    if args.core and not only:
        only = CORE
    unknown = [n for n in only if n not in dict(SCENARIOS)]
    if unknown:
        print(f"e2e.py: no scenario {unknown}; --list shows them", file=sys.stderr)
        return 2
    chosen = [(n, f) for n, f in SCENARIOS if n in only] if only else SCENARIOS
    passed = failed = 0
    for name, fn in chosen:
        print(f"== scenario {name}: {fn.__doc__}", flush=True)
        t = time.monotonic()
        try:
            fn()
            passed += 1
            print(f"ok   {name} ({time.monotonic() - t:.0f} s)", flush=True)
        except Exception as e:
            failed += 1
            print(f"FAIL {name} ({time.monotonic() - t:.0f} s): {e}", flush=True)
            traceback.print_exc()
            dump_state()
    print(f"k8s-e2e: {len(chosen)} scenarios, {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
