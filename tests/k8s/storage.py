#!/usr/bin/env python3
"""Kubernetes' own storage on its store: the storage workload.

Run by ``scripts/k8s/e2e --storage`` after scripts/k8s/up started the
control plane on etcd or on Nod (NOD_K8S_STORE). It drives kube-apiserver
through its REST API (python3's standard library, with the admin client
certificate) and kubectl, and checks what comes back against what the
script itself wrote: every expected value below is something this script
created, counted or read earlier, never a constant about the store.

Two resources carry the load, each on one of kube-apiserver's two storage
paths:
  configmaps    through the watch cache (lists and watches are served by
                the cacher; with a store it trusts, consistent reads too);
  podtemplates  straight to the store (scripts/k8s/e2e --storage starts
                kube-apiserver with --watch-cache-sizes=podtemplates#0):
                every list is a Range with limit/count, every watch a
                store watch with prev_kv.
kube-apiserver compacts the store every 10 s (--etcd-compaction-interval)
and writes events with a 20 s lease (--event-ttl).

The scenarios run in order and build on each other (SCENARIOS below); the
run ends with ``k8s-e2e: N scenarios, P passed, F failed``.

usage: storage.py [--list] [--plant lost-write]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import traceback
from urllib.parse import urlencode

RUN = os.environ.get("NOD_K8S_RUN", "/tmp/nod-k8s")
ETCDCTL = os.environ.get("ETCDCTL", "etcdctl")
NAMESPACES = [f"st-{i:02d}" for i in range(1, 7)]   # the last three are deleted
DELETED_NAMESPACES = NAMESPACES[3:]
CONFIGMAPS_PER_NS = 10
PODTEMPLATES_PER_NS = 5
SECRETS_PER_NS = 3
REPLICAS = 2
WORKERS = 4            # concurrent increments of one counter
INCREMENTS = 15        # per worker
EVENTS = 10           # written with kube-apiserver's --event-ttl: a lease each
CM = ("configmaps", "nod-storage=cm")
PT = ("podtemplates", "nod-storage=pt")
EV = ("events", "nod-storage=ev")


class Failed(AssertionError):
    pass


def say(msg):
    print(f"    {time.strftime('%H:%M:%S')} {msg}", flush=True)


def wait_until(what, fn, timeout=60.0, interval=0.5):
    """Polls fn until it returns a truthy value; fails with what it last saw."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last = v
        except Failed as e:
            last = e
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:.0f}s waiting for {what} (last: {last})")
        time.sleep(interval)


def check(cond, msg):
    if not cond:
        raise Failed(msg)


# ---- the API, through the standard library

class Api:
    """kube-apiserver over HTTPS with the admin certificate that up wrote."""

    def __init__(self, run):
        pki = os.path.join(run, "pki")
        with open(os.path.join(run, "admin.kubeconfig")) as f:
            server = re.search(r"server: https://([^:\s]+):(\d+)", f.read())
        self.host, self.port = server.group(1), int(server.group(2))
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))

    def connect(self, timeout=30):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def call(self, method, path, body=None, params=None, ctype="application/json"):
        """(status, decoded body) of one request."""
        if params:
            path += "?" + urlencode(params)
        conn = self.connect()
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": ctype, "Accept": "application/json"})
            r = conn.getresponse()
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
        finally:
            conn.close()

    def ok(self, method, path, body=None, params=None, want=(200, 201)):
        status, out = self.call(method, path, body, params)
        if status not in want:
            raise Failed(f"{method} {path} {params or ''}: {status} {str(out)[:300]}")
        return out

    def get(self, path, **params):
        return self.ok("GET", path, params=params)

    def raw(self, path):
        conn = self.connect()
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()


def coll(resource, ns=None):
    return f"/api/v1/namespaces/{ns}/{resource}" if ns else f"/api/v1/{resource}"


def rv(obj) -> int:
    return int(obj["metadata"]["resourceVersion"])


def key_of(obj):
    return obj["metadata"].get("namespace"), obj["metadata"]["name"]


class Watcher:
    """A REST watch in a thread: every event it got, in order."""

    def __init__(self, api, path, params, name):
        self.api, self.name = api, name
        self.path = path + "?" + urlencode(dict(params, watch="1", timeoutSeconds="1800"))
        self.events = []          # decoded {"type", "object"} in arrival order
        self.arrived = []         # time.monotonic() of each event's arrival
        self.status = None        # HTTP status of the watch request
        self.body = ""            # its body when not 200
        self.ended = False
        self.cond = threading.Condition()
        self.conn = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self, timeout=30):
        self.thread.start()
        with self.cond:
            self.cond.wait_for(lambda: self.status is not None or self.ended, timeout)
        return self

    def run(self):
        try:
            self.conn = self.api.connect(timeout=None)
            self.conn.request("GET", self.path, headers={"Accept": "application/json"})
            r = self.conn.getresponse()
            with self.cond:
                self.status = r.status
                self.cond.notify_all()
            if r.status != 200:
                self.body = r.read().decode(errors="replace")
                return
            while True:
                line = r.readline()
                if not line:
                    return
                if line.strip():
                    ev = json.loads(line)
                    with self.cond:
                        self.events.append(ev)
                        self.arrived.append(time.monotonic())
                        self.cond.notify_all()
        except (OSError, http.client.HTTPException, ValueError) as e:
            if not self.ended:
                self.body = f"{type(e).__name__}: {e}"
        finally:
            with self.cond:
                self.ended = True
                self.cond.notify_all()

    def close(self):
        with self.cond:
            was = self.ended
            self.ended = True
        if not was and self.conn is not None and self.conn.sock is not None:
            try:
                self.conn.sock.shutdown(2)
            except OSError:
                pass

    def snapshot(self):
        with self.cond:
            return list(self.events)

    def wait_for(self, what, pred, timeout=30):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.events):
                left = deadline - time.monotonic()
                if left <= 0 or self.ended:
                    raise Failed(f"watch {self.name}: {what} not seen in {timeout}s "
                                 f"({len(self.events)} events, ended={self.ended} {self.body[:200]})")
                self.cond.wait(min(left, 1.0))

    def saw_rv(self, want: int, timeout=30):
        self.wait_for(f"resourceVersion {want}",
                      lambda evs: any(e["type"] != "ERROR" and rv(e["object"]) >= want for e in evs), timeout)


# ---- the store, beside kube-apiserver

class Store:
    """What scripts/k8s/up started: etcd or Nod, and its client URLs."""

    def __init__(self, run):
        with open(os.path.join(run, "store")) as f:
            self.kind, urls = f.read().split()
        self.endpoints = urls.split(",")

    def etcdctl(self, *args, check_rc=True, endpoints=None):
        endpoints = endpoints or self.endpoints
        r = subprocess.run([ETCDCTL, f"--endpoints={','.join(endpoints)}", "--command-timeout=10s",
                            "--dial-timeout=5s", *args], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, ETCDCTL_API="3"))
        if check_rc and r.returncode != 0:
            raise Failed(f"etcdctl {' '.join(args)}: {r.stderr.strip()}")
        return r

    def version(self) -> str:
        out = json.loads(self.etcdctl("endpoint", "status", "-w", "json").stdout)
        versions = {e["Status"]["version"] for e in out}
        check(len(versions) == 1, f"the store's members report different versions: {versions}")
        return versions.pop()

    def compact_revision(self) -> int:
        """The revision kube-apiserver's compactor last compacted to (it
        writes it to compact_rev_key just before compacting)."""
        out = self.etcdctl("get", "compact_rev_key", "--print-value-only").stdout.strip()
        return int(out) if out else 0


def progress_requests_trusted(version: str) -> bool:
    """kube-apiserver's rule (storage/feature/feature_support_checker.go):
    RequestWatchProgress is used with etcd >= 3.4.31 in 3.4, >= 3.5.13 from 3.5."""
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)$", version)
    if not m:
        return False
    v = tuple(int(x) for x in m.groups())
    return (3, 4, 31) <= v < (3, 5, 0) or v >= (3, 5, 13)


# ---- the script's own record of what it did

class Model:
    """Per object (resource, namespace, name): the events its watch must
    show, as (type, resourceVersion); the version is None where the script
    cannot know it (deletions by the namespace controller)."""

    def __init__(self):
        self.history = {}
        self.lock = threading.Lock()

    def record(self, resource, obj, typ):
        with self.lock:
            self.history.setdefault((resource, *key_of(obj)), []).append((typ, rv(obj)))

    def record_delete(self, resource, ns, name):
        with self.lock:
            self.history[(resource, ns, name)].append(("DELETED", None))

    def live(self, resource):
        """{(ns, name): resourceVersion} of the objects not deleted."""
        out = {}
        for (res, ns, name), hist in self.history.items():
            if res == resource and hist[-1][0] != "DELETED":
                out[(ns, name)] = max(r for _, r in hist if r is not None)
        return out

    def expected_events(self, resource, ns, name):
        """The sequence the watch must show: writes by version, a deletion last."""
        hist = self.history[(resource, ns, name)]
        writes = sorted((r, t) for t, r in hist if t != "DELETED")
        return [(t, r) for r, t in writes] + [(t, r) for t, r in hist if t == "DELETED"]


class Workload:
    def __init__(self):
        self.api = Api(RUN)
        self.store = Store(RUN)
        with open(os.path.join(RUN, "bin")) as f:
            self.kubectl_bin = os.path.join(f.read().strip(), "kubectl")
        self.model = Model()
        self.watchers = {}
        self.apiserver_pid = open(os.path.join(RUN, "pids", "kube-apiserver.pid")).read().strip()
        self.log_path = os.path.join(RUN, "logs", "kube-apiserver.log")
        self.version = self.store.version()
        self.progress = progress_requests_trusted(self.version)
        self.rv0 = {}
        self.event_sent = {}   # (ns, name) -> time.monotonic() before the POST

    def kubectl(self, *args, input=None):
        r = subprocess.run([self.kubectl_bin, *args], capture_output=True, text=True, input=input, timeout=120,
                           env=dict(os.environ, KUBECONFIG=os.path.join(RUN, "admin.kubeconfig")))
        if r.returncode != 0:
            raise Failed(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def apiserver_log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def apiserver_flag(self, name):
        m = re.findall(rf'FLAG: --{re.escape(name)}="([^"]*)"', self.apiserver_log())
        return m[-1] if m else None

    def create(self, resource, ns, body):
        out = self.api.ok("POST", coll(resource, ns), body, want=(201,))
        self.model.record(resource, out, "ADDED")
        return out

    def put(self, resource, obj, want=(200,)):
        ns, name = key_of(obj)
        status, out = self.api.call("PUT", f"{coll(resource, ns)}/{name}", obj)
        if status == 200:
            self.model.record(resource, out, "MODIFIED")
        if status not in want:
            raise Failed(f"PUT {resource} {ns}/{name}: {status} {str(out)[:300]}")
        return status, out

    def list_all(self, resource, selector, ns=None, limit=None):
        """Every page of a list: (items, [page metadata])."""
        items, metas, cont = [], [], None
        while True:
            params = {"labelSelector": selector} if selector else {}
            if limit:
                params["limit"] = str(limit)
            if cont:
                params["continue"] = cont
            page = self.api.get(coll(resource, ns), **params)
            items += page["items"]
            metas.append(page["metadata"])
            cont = page["metadata"].get("continue")
            if not cont:
                return items, metas
            check(limit, f"a list of {resource} without limit returned a continue token")

    # ---- scenarios

    def scenario_create(self):
        """watches from a recorded version, then namespaces, configmaps, podtemplates, events, secrets
        and deployments whose pods stay Pending; every object listed as written, the watches reach the
        last write"""
        for resource, selector in (CM, PT, EV):
            self.rv0[resource] = int(self.api.get(coll(resource), labelSelector=selector,
                                                  limit="1")["metadata"]["resourceVersion"])
            w = Watcher(self.api, coll(resource), {"labelSelector": selector, "allowWatchBookmarks": "true",
                                                   "resourceVersion": str(self.rv0[resource])}, resource).start()
            check(w.status == 200, f"watch {resource} from {self.rv0[resource]}: {w.status} {w.body[:300]}")
            self.watchers[resource] = w
        for ns in NAMESPACES:
            self.api.ok("POST", "/api/v1/namespaces",
                        {"metadata": {"name": ns, "labels": {"nod-storage": "ns"}}}, want=(201,))
        for ns in NAMESPACES:
            for i in range(CONFIGMAPS_PER_NS):
                self.create("configmaps", ns, {"metadata": {"name": f"cm-{i:02d}", "labels": {"nod-storage": "cm"}},
                                               "data": {"i": str(i), "ns": ns}})
            for i in range(PODTEMPLATES_PER_NS):
                self.create("podtemplates", ns, {
                    "metadata": {"name": f"pt-{i:02d}", "labels": {"nod-storage": "pt"}},
                    "template": {"metadata": {"labels": {"i": str(i)}},
                                 "spec": {"containers": [{"name": "c", "image": "nod:none"}]}}})
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for i in range(EVENTS):
            self.event_sent[(NAMESPACES[0], f"ev-{i:02d}")] = time.monotonic()
            self.create("events", NAMESPACES[0], {
                "metadata": {"name": f"ev-{i:02d}", "labels": {"nod-storage": "ev"}},
                "involvedObject": {"kind": "ConfigMap", "namespace": NAMESPACES[0], "name": f"cm-{i:02d}"},
                "reason": "NodStorage", "message": f"event {i}", "type": "Normal",
                "firstTimestamp": now, "lastTimestamp": now, "count": 1,
                "source": {"component": "nod-storage"}})
        docs = []
        for ns in NAMESPACES:
            for i in range(SECRETS_PER_NS):
                docs.append(f"""apiVersion: v1
kind: Secret
metadata: {{name: s-{i:02d}, namespace: {ns}, labels: {{nod-storage: secret}}}}
stringData: {{password: "p-{ns}-{i}"}}""")
            docs.append(f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: {REPLICAS}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      nodeSelector: {{nod.io/none: "true"}}
      containers: [{{name: web, image: nod:none}}]""")
        self.kubectl("apply", "-f", "-", input="\n---\n".join(docs))
        say(f"created {len(NAMESPACES)} namespaces, {len(self.model.live('configmaps'))} configmaps, "
            f"{len(self.model.live('podtemplates'))} podtemplates, {len(self.model.live('events'))} events, "
            f"{SECRETS_PER_NS * len(NAMESPACES)} secrets, {len(NAMESPACES)} deployments")
        for resource, selector in (CM, PT, EV):
            items, _ = self.list_all(resource, selector)
            got = {key_of(o): rv(o) for o in items}
            check(got == self.model.live(resource),
                  f"{resource}: a list shows {len(got)} objects, the script created {len(self.model.live(resource))}"
                  f" (or their versions differ)")
        for ns in NAMESPACES:
            secrets = self.api.get(coll("secrets", ns), labelSelector="nod-storage=secret")["items"]
            want = {f"s-{i:02d}": f"p-{ns}-{i}" for i in range(SECRETS_PER_NS)}
            got = {s["metadata"]["name"]: base64.b64decode(s["data"]["password"]).decode() for s in secrets}
            check(got == want, f"secrets in {ns}: {got}, want {want}")

        def pods_pending():
            by_ns = {}
            for p in self.api.get(coll("pods"), labelSelector="app=web")["items"]:
                conds = {c["type"]: c for c in p.get("status", {}).get("conditions", [])}
                if (p["metadata"]["namespace"] in NAMESPACES and p["status"].get("phase") == "Pending"
                        and conds.get("PodScheduled", {}).get("reason") == "Unschedulable"):
                    by_ns[p["metadata"]["namespace"]] = by_ns.get(p["metadata"]["namespace"], 0) + 1
            return by_ns == {ns: REPLICAS for ns in NAMESPACES} and by_ns
        wait_until(f"{REPLICAS} unschedulable Pending pods in each namespace (controllers and scheduler writing)",
                   pods_pending, timeout=120)
        say(f"the controllers made {REPLICAS * len(NAMESPACES)} pods; the scheduler marked them Unschedulable")
        for resource, _ in (CM, PT, EV):
            last = max(self.model.live(resource).values())
            self.watchers[resource].saw_rv(last)
        say("the watches saw every ADDED")

    def scenario_list_paginate(self):
        """limit/continue through REST on both paths: every item once, one resourceVersion across pages,
        remainingItemCount from the store; kubectl --chunk-size"""
        for (resource, selector), limit in ((CM, 7), (PT, 4)):
            items, metas = self.list_all(resource, selector, limit=limit)
            names = [key_of(o) for o in items]
            check(len(names) == len(set(names)), f"{resource}: paginated list repeats items")
            want = self.model.live(resource)
            check({k: rv(o) for k, o in zip(names, items)} == want,
                  f"{resource}: paginated list has {len(names)} items, the script wrote {len(want)}")
            rvs = {m["resourceVersion"] for m in metas}
            check(len(rvs) == 1, f"{resource}: pages carry different resourceVersions {rvs}")
            pages = -(-len(want) // limit)
            check(len(metas) == pages, f"{resource}: {len(metas)} pages of {limit} for {len(want)} items")
            check(names == sorted(names, key=lambda k: f"{k[0]}/{k[1]}"), f"{resource}: pages out of key order")
            say(f"{resource}: {len(names)} items in {len(metas)} pages of {limit}, all at resourceVersion {rvs.pop()}")
        # The store's count: remainingItemCount on the path that lists from the store.
        ns = NAMESPACES[0]
        full = self.api.get(coll("podtemplates", ns))["items"]
        items, metas = self.list_all("podtemplates", None, ns=ns, limit=2)
        check([key_of(o) for o in items] == [key_of(o) for o in full],
              f"podtemplates in {ns}: pages {[key_of(o) for o in items]} != one list {[key_of(o) for o in full]}")
        for i, m in enumerate(metas):
            seen = min(2 * (i + 1), len(full))
            want = len(full) - seen
            got = m.get("remainingItemCount")
            check((got or 0) == want and (got is None) == (want == 0),
                  f"podtemplates in {ns}: remainingItemCount {got} after {seen} of {len(full)}")
        say(f"podtemplates in {ns}: remainingItemCount {[m.get('remainingItemCount') for m in metas]} "
            f"for {len(full)} items")
        out = self.kubectl("get", "configmaps", "-A", "-l", "nod-storage=cm", "--chunk-size=7", "-o",
                           "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}")
        got = sorted(out.split())
        want = sorted(f"{ns}/{n}" for ns, n in self.model.live("configmaps"))
        check(got == want, f"kubectl --chunk-size=7 listed {len(got)} configmaps, want {len(want)}")
        say(f"kubectl get --chunk-size=7: {len(got)} configmaps")

    def stale_update(self, resource, ns, name, change):
        """PUT with a version that is no longer current: 409 Conflict; a
        DELETE with that version as precondition: 409 too."""
        obj = self.api.get(f"{coll(resource, ns)}/{name}")
        stale = json.loads(json.dumps(obj))
        change(obj)
        _, fresh = self.put(resource, obj)
        change(stale)
        status, out = self.put(resource, stale, want=(409,))
        check(out.get("reason") == "Conflict", f"stale PUT of {resource} {ns}/{name}: {out}")
        status, out = self.api.call("DELETE", f"{coll(resource, ns)}/{name}",
                                    {"preconditions": {"resourceVersion": stale["metadata"]["resourceVersion"]}})
        check(status == 409 and out.get("reason") == "Conflict",
              f"DELETE of {resource} {ns}/{name} with a stale version: {status} {out}")
        now = self.api.get(f"{coll(resource, ns)}/{name}")
        check(rv(now) == rv(fresh), f"{resource} {ns}/{name} changed after refused writes: {rv(now)} != {rv(fresh)}")

    def scenario_update_conflicts(self):
        """stale PUT and DELETE get 409; concurrent optimistic increments of one counter end exactly at
        the number of successful writes; a deployment scaled by kubectl"""
        ns = NAMESPACES[0]

        def touch_cm(o):
            o["data"]["touched"] = "1"

        def touch_pt(o):
            o["template"]["metadata"]["labels"]["touched"] = "1"
        self.stale_update("configmaps", ns, "cm-00", touch_cm)
        self.stale_update("podtemplates", ns, "pt-00", touch_pt)
        say("stale PUT: 409 Conflict; stale DELETE precondition: 409 Conflict (configmaps and podtemplates)")
        self.create("configmaps", ns, {"metadata": {"name": "counter", "labels": {"nod-storage": "cm"}},
                                       "data": {"n": "0"}})
        path = f"{coll('configmaps', ns)}/counter"
        conflicts = [0] * WORKERS
        done = [0] * WORKERS
        errors = []
        barrier = threading.Barrier(WORKERS)
        first = [None] * WORKERS

        def increment(w, together):
            while True:
                obj = self.api.get(path)
                if together:
                    barrier.wait(timeout=30)   # everyone holds the same version
                obj["data"]["n"] = str(int(obj["data"]["n"]) + 1)
                status, _ = self.put("configmaps", obj, want=(200, 409))
                if together:
                    return status
                if status == 200:
                    return status
                conflicts[w] += 1

        def worker(w):
            try:
                first[w] = increment(w, True)
                done[w] += first[w] == 200
                for _ in range(INCREMENTS):
                    increment(w, False)
                    done[w] += 1
            except Exception as e:
                errors.append(f"worker {w}: {e}")
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        check(not errors, f"increment workers failed: {errors}")
        check(sorted(first) == [200] + [409] * (WORKERS - 1),
              f"{WORKERS} PUTs with the same resourceVersion gave {first}: want one 200, the rest 409")
        n = int(self.api.get(path)["data"]["n"])
        check(n == sum(done) == 1 + WORKERS * INCREMENTS,
              f"counter is {n} after {sum(done)} successful increments (want {1 + WORKERS * INCREMENTS})")
        say(f"counter: {n} after {WORKERS} workers x {INCREMENTS} increments (+1 from the race of {WORKERS}), "
            f"{sum(conflicts)} conflicts retried")
        self.kubectl("scale", "deployment/web", "-n", ns, f"--replicas={REPLICAS + 1}")
        wait_until(f"{REPLICAS + 1} pods of the scaled deployment",
                   lambda: len(self.api.get(coll("pods", ns), labelSelector="app=web")["items"]) == REPLICAS + 1,
                   timeout=60)
        say(f"kubectl scale: {REPLICAS + 1} pods in {ns}")

    def check_watch_history(self, resource, complete=False):
        """The events of one watch, against the script's record: per object
        exactly the writes it made, in version order; versions never going
        back across the stream; no ERROR."""
        w = self.watchers[resource]
        check(not w.ended, f"watch {resource} ended: {w.body[:300]}")
        evs = w.snapshot()
        errors = [e for e in evs if e["type"] == "ERROR"]
        check(not errors, f"watch {resource} got ERROR events: {errors[:2]}")
        last = self.rv0[resource]
        seen = {}
        for e in evs:
            r = rv(e["object"])
            if e["type"] == "BOOKMARK":
                check(r >= last, f"watch {resource}: bookmark at {r} after an event at {last}")
                last = r
                continue
            # One revision may delete many keys (a lease's), so only
            # "never backwards" across the stream; per object, strictly up.
            check(r >= last, f"watch {resource}: {e['type']} at {r} after {last} (out of order)")
            last = r
            hist = seen.setdefault((resource, *key_of(e["object"])), [])
            check(not hist or r > hist[-1][1], f"watch {resource} {key_of(e['object'])}: {e['type']} at {r} "
                                               f"after {hist[-1:]} (out of order or repeated)")
            hist.append((e["type"], r))
        mine = {k for k in self.model.history if k[0] == resource}
        check(set(seen) == mine, f"watch {resource}: events for {len(set(seen))} objects, the script wrote "
                                 f"{len(mine)}: extra {sorted(set(seen) - mine)[:3]} missing {sorted(mine - set(seen))[:3]}")
        for k in mine:
            want = self.model.expected_events(*k)
            got = seen[k]
            same = len(got) == len(want) and all(
                gt == wt and (wr is None or gr == wr) for (gt, gr), (wt, wr) in zip(got, want))
            check(same, f"watch {resource} {k[1]}/{k[2]}: events {got[:6]}..., want {want[:6]}...")
        kinds = {}
        for e in evs:
            kinds[e["type"]] = kinds.get(e["type"], 0) + 1
        return kinds

    def scenario_watch(self):
        """the watches from the first version saw every ADDED/MODIFIED in order, the counter's values
        one by one; watch-list (sendInitialEvents) ends its initial events with a bookmark when the
        store's version lets kube-apiserver request progress, and is refused otherwise"""
        for resource, _ in (CM, PT):
            self.watchers[resource].saw_rv(max(self.model.live(resource).values()))
            kinds = self.check_watch_history(resource)
            say(f"watch {resource} from {self.rv0[resource]}: {kinds}, as written")
        ns = NAMESPACES[0]
        ns_counts = [int(e["object"]["data"]["n"]) for e in self.watchers["configmaps"].snapshot()
                     if e["type"] in ("ADDED", "MODIFIED") and key_of(e["object"]) == (ns, "counter")]
        check(ns_counts == list(range(len(ns_counts))) and len(ns_counts) == 2 + WORKERS * INCREMENTS,
              f"the counter's values on the watch: {ns_counts}")
        say(f"the counter went 0..{ns_counts[-1]} on the watch, no value lost or repeated")
        # Watch-list.
        ns = NAMESPACES[1]
        listed = self.api.get(coll("configmaps", ns))
        want = {o["metadata"]["name"]: rv(o) for o in listed["items"]}
        w = Watcher(self.api, coll("configmaps", ns), {"sendInitialEvents": "true", "allowWatchBookmarks": "true",
                                                        "resourceVersionMatch": "NotOlderThan"}, "watch-list").start()
        try:
            def ended_initial(evs):
                return any(e["type"] == "ERROR" or (e["type"] == "BOOKMARK" and e["object"]["metadata"].get(
                    "annotations", {}).get("k8s.io/initial-events-end") == "true") for e in evs)
            if w.status == 200:
                w.wait_for("the end of the initial events (or an error)", ended_initial, timeout=20)
            evs = w.snapshot()
        finally:
            w.close()
        if self.progress:
            check(w.status == 200, f"watch-list: {w.status} {w.body[:300]}")
            check(evs[-1]["type"] == "BOOKMARK", f"watch-list with store {self.version}: {evs[-1]}")
            got = {e["object"]["metadata"]["name"]: rv(e["object"]) for e in evs[:-1] if e["type"] == "ADDED"}
            check(len(evs) - 1 == len(got) and got == want,
                  f"watch-list initial events {got}, a list showed {want}")
            check(rv(evs[-1]["object"]) >= int(listed["metadata"]["resourceVersion"]),
                  f"watch-list bookmark at {rv(evs[-1]['object'])}, older than a list before it")
            say(f"watch-list (store {self.version}): {len(got)} ADDED, then the initial-events-end bookmark "
                f"at {rv(evs[-1]['object'])}")
        else:
            text = w.body if w.status != 200 else json.dumps([e for e in evs if e["type"] == "ERROR"])
            check("RequestWatchProgress" in text,
                  f"watch-list with store {self.version} (progress requests not trusted): want a refusal naming "
                  f"RequestWatchProgress, got {w.status} {text[:300]} {evs[:2]}")
            say(f"watch-list (store {self.version}): refused, RequestWatchProgress disabled, as kube-apiserver "
                f"decides for this version")

    def scenario_compaction(self):
        """kube-apiserver's compactor advances the store's compact revision; the store refuses reads
        below it; a continue token and a watch from before it get 410 Gone"""
        interval = self.apiserver_flag("etcd-compaction-interval")
        secs = parse_duration(interval or "")
        check(secs and secs <= 60, f"kube-apiserver compacts every {interval}: the workload needs <= 60s "
                                   f"(scripts/k8s/e2e --storage passes --etcd-compaction-interval=10s)")
        ns = NAMESPACES[2]
        page = self.api.get(coll("podtemplates", ns), limit="2")
        check(page["metadata"].get("continue"), f"podtemplates in {ns}: no continue token with limit=2")
        pt_rv = int(page["metadata"]["resourceVersion"])
        cm_page = self.api.get(coll("configmaps"), labelSelector="nod-storage=cm", limit="7")
        cm_rv = int(cm_page["metadata"]["resourceVersion"])
        cm_live = set(self.model.live("configmaps"))
        # Writes after the tokens, so the compaction that passes them is a real one.
        obj = self.api.get(f"{coll('configmaps', ns)}/cm-01")
        obj["data"]["after-token"] = "1"
        self.put("configmaps", obj)
        before = self.store.compact_revision()
        target = max(pt_rv, cm_rv)
        t0 = time.monotonic()
        compacted = wait_until(f"the store's compact revision ({before}) to pass {target}",
                               lambda: (lambda c: c > target and c)(self.store.compact_revision()),
                               timeout=3 * secs + 30)
        say(f"compact revision {before} -> {compacted} after {time.monotonic() - t0:.0f} s (tokens at {target})")
        for ep in self.store.endpoints:   # each member compacted
            r = self.store.etcdctl("get", "compact_rev_key", f"--rev={compacted - 1}", check_rc=False, endpoints=[ep])
            check(r.returncode != 0 and "required revision has been compacted" in r.stderr,
                  f"{ep} serves revision {compacted - 1} below the compaction at {compacted}: {r.stderr or r.stdout}")
            self.store.etcdctl("get", "compact_rev_key", f"--rev={compacted}", endpoints=[ep])
        say(f"the store ({len(self.store.endpoints)} member(s)): revision {compacted - 1} compacted, "
            f"{compacted} readable")
        status, out = self.api.call("GET", coll("podtemplates", ns),
                                    params={"limit": "2", "continue": page["metadata"]["continue"]})
        check(status == 410 and out.get("reason") == "Expired" and out.get("metadata", {}).get("continue"),
              f"podtemplates: continue from {pt_rv} after compaction to {compacted}: {status} {str(out)[:300]}")
        say("podtemplates: stale continue token -> 410 Expired with an inconsistent-continue token")
        status, out = self.api.call("GET", coll("configmaps"), params={
            "labelSelector": "nod-storage=cm", "limit": "1000", "continue": cm_page["metadata"]["continue"]})
        if status == 200:
            names = [key_of(o) for o in cm_page["items"] + out["items"]]
            check(sorted(names) == sorted(cm_live) and not out["metadata"].get("continue"),
                  f"configmaps: the rest of a list at {cm_rv} after compaction is not that list")
            say("configmaps: stale continue token served from the watch cache's snapshot, complete")
        else:
            check(status == 410 and out.get("reason") == "Expired",
                  f"configmaps: continue from {cm_rv} after compaction: {status} {str(out)[:300]}")
            say("configmaps: stale continue token -> 410 Expired")
        w = Watcher(self.api, coll("podtemplates"), {"labelSelector": "nod-storage=pt",
                                                      "resourceVersion": str(self.rv0["podtemplates"])}, "old").start()
        try:
            if w.status == 200:
                w.wait_for("an event", lambda evs: evs, timeout=20)
            evs = w.snapshot()
        finally:
            w.close()
        gone = w.status == 410 or (evs and evs[0]["type"] == "ERROR" and evs[0]["object"].get("code") == 410)
        check(gone, f"watch podtemplates from {self.rv0['podtemplates']} (compacted at {compacted}): "
                    f"{w.status} {w.body[:200]} {evs[:1]}")
        say(f"watch podtemplates from {self.rv0['podtemplates']}: 410 Gone")

    def scenario_delete(self):
        """namespaces deleted by the namespace controller; each watch saw exactly one DELETED per object"""
        for ns in DELETED_NAMESPACES:
            self.api.ok("DELETE", f"/api/v1/namespaces/{ns}", want=(200, 202))
        t0 = time.monotonic()
        for ns in DELETED_NAMESPACES:
            wait_until(f"namespace {ns} to go",
                       lambda: self.api.call("GET", f"/api/v1/namespaces/{ns}")[0] == 404, timeout=120)
        say(f"{len(DELETED_NAMESPACES)} namespaces gone in {time.monotonic() - t0:.0f} s")
        for resource in ("configmaps", "podtemplates"):
            gone = [k for k in self.model.history if k[0] == resource and k[1] in DELETED_NAMESPACES]
            for k in gone:
                self.model.record_delete(*k)
            w = self.watchers[resource]
            w.wait_for(f"{len(gone)} DELETED", lambda evs: sum(
                e["type"] == "DELETED" and key_of(e["object"])[0] in DELETED_NAMESPACES for e in evs) >= len(gone))
            items, _ = self.list_all(resource, CM[1] if resource == "configmaps" else PT[1])
            left = [key_of(o) for o in items if key_of(o)[0] in DELETED_NAMESPACES]
            check(not left, f"{resource} of deleted namespaces still listed: {left[:3]}")
            say(f"{resource}: {len(gone)} DELETED events for {len(gone)} objects")
        for ns in DELETED_NAMESPACES:
            pods = self.api.get(coll("pods", ns))["items"]
            check(not pods, f"pods left in deleted namespace {ns}: {[p['metadata']['name'] for p in pods]}")

    def scenario_ttl(self):
        """objects with a TTL (events, kube-apiserver's --event-ttl) vanish when their lease expires, not
        before: one DELETED each on the watch, gone from the store; the master lease stays renewed"""
        ttl = parse_duration(self.apiserver_flag("event-ttl") or "")
        check(ttl and ttl <= 60, f"kube-apiserver's --event-ttl is {ttl}s: the workload needs <= 60s "
                                 f"(scripts/k8s/e2e --storage passes --event-ttl=20s)")
        mine = [k for k in self.model.history if k[0] == "events"]
        # kube-apiserver grants TTL + 5 % and reuses a lease for writes within that 5 %.
        deadline = max(self.event_sent.values()) + ttl * 1.05 + 30
        wait_until("the events to expire", lambda: not self.api.get(coll("events"), labelSelector=EV[1])["items"],
                   timeout=max(deadline - time.monotonic(), 1))
        for k in mine:
            self.model.record_delete(*k)
        w = self.watchers["events"]
        w.wait_for(f"{len(mine)} DELETED", lambda evs: sum(e["type"] == "DELETED" for e in evs) >= len(mine))
        with w.cond:
            lived = {key_of(e["object"]): t - self.event_sent[key_of(e["object"])]
                     for e, t in zip(w.events, w.arrived) if e["type"] == "DELETED"}
        early = {k: round(v, 1) for k, v in lived.items() if v < ttl}
        check(not early, f"events deleted before their TTL of {ttl:.0f} s: {early}")
        for _, ns, name in mine:
            r = self.store.etcdctl("get", f"/registry/events/{ns}/{name}", "--keys-only")
            check(not r.stdout.strip(), f"the store still holds event {ns}/{name}")
        kinds = self.check_watch_history("events")
        say(f"{len(mine)} events expired {min(lived.values()):.1f}-{max(lived.values()):.1f} s after they were "
            f"written (--event-ttl {ttl:.0f}s); watch: {kinds}; the store holds none of them")
        out = json.loads(self.store.etcdctl("get", "/registry/masterleases/", "--prefix", "-w", "json").stdout)
        leases = {base64.b64decode(kv["key"]).decode(): kv.get("lease", 0) for kv in out.get("kvs", [])}
        check(leases and all(leases.values()), f"master leases in the store: {leases}")
        ep = self.api.get("/api/v1/namespaces/default/endpoints/kubernetes")
        ips = [a["ip"] for sub in ep.get("subsets", []) for a in sub.get("addresses", [])]
        check(ips and sorted(k.rsplit("/", 1)[-1] for k in leases) == sorted(ips),
              f"the kubernetes endpoints {ips} do not match the master leases {list(leases)}")
        say(f"master leases {list(leases)} held by leases; kubernetes endpoints {ips}")

    def scenario_consistency(self):
        """each watch's reconstructed state equals a fresh list and the script's record; kube-apiserver
        never restarted, never failed a compaction; its progress-request decision matches the store"""
        ns = NAMESPACES[0]
        sentinels = {"configmaps": self.create("configmaps", ns, {
            "metadata": {"name": "sentinel", "labels": {"nod-storage": "cm"}}}),
            "podtemplates": self.create("podtemplates", ns, {
                "metadata": {"name": "sentinel", "labels": {"nod-storage": "pt"}},
                "template": {"spec": {"containers": [{"name": "c", "image": "nod:none"}]}}})}
        for resource, selector in (CM, PT):
            w = self.watchers[resource]
            w.saw_rv(rv(sentinels[resource]))
            state = {}
            for e in w.snapshot():
                if e["type"] in ("ADDED", "MODIFIED"):
                    state[key_of(e["object"])] = rv(e["object"])
                elif e["type"] == "DELETED":
                    state.pop(key_of(e["object"]), None)
            items, _ = self.list_all(resource, selector)
            listed = {key_of(o): rv(o) for o in items}
            check(state == listed, f"{resource}: the watch's state ({len(state)} objects) differs from a list "
                                   f"({len(listed)}): {sorted(set(state.items()) ^ set(listed.items()))[:4]}")
            check(listed == self.model.live(resource),
                  f"{resource}: a list differs from what the script wrote")
            kinds = self.check_watch_history(resource)
            say(f"{resource}: watch state == list == the script's record ({len(listed)} objects; events {kinds})")
        for w in self.watchers.values():
            w.close()
        pid = open(os.path.join(RUN, "pids", "kube-apiserver.pid")).read().strip()
        check(pid == self.apiserver_pid and os.path.exists(f"/proc/{pid}"),
              f"kube-apiserver restarted or stopped (pid {self.apiserver_pid} -> {pid})")
        status, _ = self.api.raw("/livez")
        check(status == 200, f"kube-apiserver /livez: {status}")
        log = self.apiserver_log()
        starts = log.count("Serving securely on")
        check(starts == 1, f"kube-apiserver log shows {starts} starts")
        failed = [line for line in log.splitlines() if "compact failed" in line]
        check(not failed, f"kube-apiserver: {len(failed)} failed compactions: {failed[:2]}")
        chan = [line for line in log.splitlines() if line.startswith("E") and "watch chan error" in line]
        check(not chan, f"kube-apiserver: {len(chan)} watch errors: {chan[:2]}")
        refused = "RequestWatchProgress feature is not supported" in log
        check(refused != self.progress, f"kube-apiserver {'refused' if refused else 'accepted'} RequestWatchProgress"
                                        f" from a store reporting {self.version}")
        status, metrics = self.api.raw("/metrics")
        check(status == 200, f"kube-apiserver /metrics: {status}")
        cache_reads = sum(float(line.split()[-1]) for line in metrics.splitlines()
                          if line.startswith("apiserver_watch_cache_consistent_read_total{")
                          and 'fallback="false"' in line and 'success="true"' in line)
        fallbacks = sum(float(line.split()[-1]) for line in metrics.splitlines()
                        if line.startswith("apiserver_watch_cache_consistent_read_total{")
                        and 'fallback="true"' in line)
        key_errors = sum("Error getting keys" in line for line in log.splitlines())
        if self.progress:
            check(cache_reads > 0, "no consistent read was served from the watch cache")
            check(key_errors == 0, f"kube-apiserver: {key_errors} 'Error getting keys' (the watch cache did not "
                                   f"catch up with progress requests)")
        else:
            check(cache_reads == 0, f"{cache_reads} consistent reads from the cache without progress requests")
        say(f"kube-apiserver pid {pid} up since the start; store {self.version}: RequestWatchProgress "
            f"{'used' if self.progress else 'not used'}, {cache_reads:.0f} consistent reads from the cache "
            f"({fallbacks:.0f} fell back to the store), "
            f"{key_errors} 'Error getting keys'; no failed compaction")


def parse_duration(s: str):
    """Seconds of a Go duration such as 10s, 1m0s, 5m0s."""
    total, found = 0.0, False
    for n, unit in re.findall(r"([\d.]+)(h|ms|m|s)", s):
        total += float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
        found = True
    return total if found else None


SCENARIOS = [
    ("create", Workload.scenario_create),
    ("list-paginate", Workload.scenario_list_paginate),
    ("update-conflicts", Workload.scenario_update_conflicts),
    ("watch", Workload.scenario_watch),
    ("compaction", Workload.scenario_compaction),
    ("delete", Workload.scenario_delete),
    ("ttl", Workload.scenario_ttl),
    ("consistency", Workload.scenario_consistency),
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--list", action="store_true")
    p.add_argument("--plant", choices=["lost-write"],
                   help="after create, delete one configmap in the store behind kube-apiserver's back, as a "
                        "store that lost an acknowledged write would: the run must fail")
    args = p.parse_args()
    if args.list:
        for name, fn in SCENARIOS:
            print(f"{name}: {' '.join(fn.__doc__.split())}")
        return 0
    work = Workload()
    print(f"    store: {work.store.kind} {','.join(work.store.endpoints)}, version {work.version}", flush=True)
    passed = failed = 0
    for name, fn in SCENARIOS:
        print(f"== scenario {name}: {' '.join(fn.__doc__.split())}", flush=True)
        t = time.monotonic()
        try:
            fn(work)
            if args.plant == "lost-write" and name == "create":
                work.store.etcdctl("del", f"/registry/configmaps/{NAMESPACES[1]}/cm-03")
                say(f"planted: /registry/configmaps/{NAMESPACES[1]}/cm-03 deleted in the store")
            passed += 1
            print(f"ok   {name} ({time.monotonic() - t:.0f} s)", flush=True)
        except Exception as e:
            failed += 1
            print(f"FAIL {name} ({time.monotonic() - t:.0f} s): {e}", flush=True)
            traceback.print_exc()
    for w in work.watchers.values():
        w.close()
    print(f"k8s-e2e: {len(SCENARIOS)} scenarios, {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
