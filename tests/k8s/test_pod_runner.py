"""Table tests of the pod runner's pure parts (NetworkPolicy evaluation and
the iptables table it renders) and of its volume sync on a temporary
directory. Standard library only; no cluster, no root:

    python3 -m unittest tests/k8s/test_pod_runner.py

(pod_runner imports requests and yaml: use ~/.cache/nod/venv/bin/python
where the system python lacks them.)
"""

import base64
import os
import stat
import sys
import tempfile
import types
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pod_runner as pr  # noqa: E402
from pod_runner import ALL_PORTS, ANYWHERE, Allow  # noqa: E402


def pod(name, ns="db", labels=None, ip=None, ports=(), phase="Running"):
    return {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "ports": [dict(p) for p in ports]}]},
        "status": {"phase": phase, **({"podIP": ip} if ip else {})},
    }


def policy(name, ns="db", selector=None, ingress=None, types_=("Ingress",)):
    spec = {"podSelector": selector if selector is not None else {}}
    if types_ is not None:
        spec["policyTypes"] = list(types_)
    if ingress is not None:
        spec["ingress"] = ingress
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def tcp(port):
    return {"protocol": "TCP", "port": port}


NOD_PORTS = [{"name": "client", "containerPort": 2379}, {"name": "peer", "containerPort": 2380},
             {"name": "gossip", "containerPort": 2382, "protocol": "UDP"}]

# The cluster every policy case runs against.
MEMBER_0 = pod("nod-0", "db", {"app": "nod", "tier": "store"}, "10.214.1.2", NOD_PORTS)
MEMBER_1 = pod("nod-1", "db", {"app": "nod", "tier": "store"}, "10.214.1.3", NOD_PORTS)
CLIENT_DB = pod("client", "db", {"app": "client"}, "10.214.1.4")
CLIENT_APP = pod("web", "apps", {"app": "client"}, "10.214.1.5")
OTHER_APP = pod("worker", "apps", {"app": "worker"}, "10.214.1.6")
OPERATOR = pod("op", "nod-system", {"app": "nod-operator"}, "10.214.1.7")
NO_IP = pod("starting", "apps", {"app": "client"})
DONE = pod("job", "apps", {"app": "client"}, "10.214.1.8", phase="Succeeded")
PODS = [MEMBER_0, MEMBER_1, CLIENT_DB, CLIENT_APP, OTHER_APP, OPERATOR, NO_IP, DONE]
NAMESPACES = pr.namespace_labels([
    {"metadata": {"name": "db", "labels": {"kubernetes.io/metadata.name": "db"}}},
    {"metadata": {"name": "apps", "labels": {"team": "web"}}},  # the automatic label is added
    {"metadata": {"name": "nod-system"}},
])


def allow(ip, proto="all", lo=None, hi=None):
    if proto == "all":
        lo, hi = ALL_PORTS
    elif lo is None:
        lo, hi = ALL_PORTS
    src = ip if "/" in ip else f"{ip}/32"
    return Allow(src, proto, lo, lo if hi is None else hi)


class SelectorTest(unittest.TestCase):
    def test_table(self):
        labels = {"app": "nod", "tier": "store"}
        cases = [
            ("empty selector", {}, True),
            ("absent selector", None, True),
            ("matchLabels match", {"matchLabels": {"app": "nod"}}, True),
            ("matchLabels all keys", {"matchLabels": {"app": "nod", "tier": "store"}}, True),
            ("matchLabels other value", {"matchLabels": {"app": "web"}}, False),
            ("matchLabels missing key", {"matchLabels": {"zone": "a"}}, False),
            ("In", {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["store", "x"]}]}, True),
            ("In other", {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]}, False),
            ("In missing key", {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}, False),
            ("NotIn", {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}, True),
            ("NotIn its value", {"matchExpressions": [{"key": "tier", "operator": "NotIn",
                                                       "values": ["store"]}]}, False),
            ("NotIn missing key", {"matchExpressions": [{"key": "zone", "operator": "NotIn",
                                                         "values": ["a"]}]}, True),
            ("Exists", {"matchExpressions": [{"key": "app", "operator": "Exists"}]}, True),
            ("Exists missing", {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, False),
            ("DoesNotExist", {"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, True),
            ("DoesNotExist present", {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, False),
            ("labels and expressions both hold", {"matchLabels": {"app": "nod"}, "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["store"]}]}, True),
            ("labels hold, expression not", {"matchLabels": {"app": "nod"}, "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["web"]}]}, False),
            ("unknown operator", {"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]}, False),
        ]
        for name, sel, want in cases:
            with self.subTest(name):
                self.assertEqual(pr.selector_matches(sel, labels), want)
        self.assertTrue(pr.selector_matches({}, None))
        self.assertFalse(pr.selector_matches({"matchLabels": {"a": "b"}}, None))


class PolicySelectsTest(unittest.TestCase):
    def test_table(self):
        cases = [
            ("empty podSelector selects all", policy("p"), True),
            ("matching labels", policy("p", selector={"matchLabels": {"app": "nod"}}), True),
            ("other labels", policy("p", selector={"matchLabels": {"app": "web"}}), False),
            ("other namespace", policy("p", ns="apps"), False),
            ("egress only", policy("p", types_=("Egress",)), False),
            ("ingress and egress", policy("p", types_=("Ingress", "Egress")), True),
            ("no policyTypes, ingress section", policy("p", ingress=[{}], types_=None), True),
            # Kubernetes: without policyTypes, every policy is an ingress policy.
            ("no policyTypes, no ingress section", policy("p", types_=None), True),
            ("matchExpressions", policy("p", selector={"matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["store"]}]}), True),
        ]
        for name, pol, want in cases:
            with self.subTest(name):
                self.assertEqual(pr.policy_selects(pol, MEMBER_0), want)


class IngressAllowedTest(unittest.TestCase):
    def allowed(self, policies, target=MEMBER_0):
        return pr.ingress_allowed(target, policies, PODS, NAMESPACES)

    def test_no_policy_allows_all(self):
        self.assertIsNone(self.allowed([]))

    def test_policy_of_other_labels_does_not_restrict(self):
        pols = [policy("web-only", selector={"matchLabels": {"app": "client"}}, ingress=[])]
        self.assertIsNone(self.allowed(pols))
        self.assertEqual(self.allowed(pols, CLIENT_DB), ())  # the pod it does select

    def test_policy_of_other_namespace_does_not_restrict(self):
        self.assertIsNone(self.allowed([policy("deny", ns="apps", ingress=[])]))

    def test_egress_policy_does_not_restrict_ingress(self):
        self.assertIsNone(self.allowed([policy("out", types_=("Egress",))]))

    def test_deny_all(self):
        self.assertEqual(self.allowed([policy("deny")]), ())
        self.assertEqual(self.allowed([policy("deny", ingress=[])]), ())

    def test_pod_selector_peer_is_same_namespace(self):
        pols = [policy("p", selector={"matchLabels": {"app": "nod"}}, ingress=[
            {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [tcp(2379)]}])]
        # client in db; not web (apps) though it has the same labels.
        self.assertEqual(self.allowed(pols), (allow("10.214.1.4", "tcp", 2379),))

    def test_pod_selector_empty_is_every_pod_of_namespace(self):
        pols = [policy("p", ingress=[{"from": [{"podSelector": {}}]}])]
        self.assertEqual(self.allowed(pols), (allow("10.214.1.2"), allow("10.214.1.3"), allow("10.214.1.4")))

    def test_namespace_selector_across_namespaces(self):
        pols = [policy("p", ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}],
                                      "ports": [tcp(2379)]}])]
        # Every pod with an IP in apps (not the one without, not the finished one).
        self.assertEqual(self.allowed(pols), (allow("10.214.1.5", "tcp", 2379), allow("10.214.1.6", "tcp", 2379)))

    def test_namespace_selector_by_automatic_name_label(self):
        pols = [policy("p", ingress=[{"from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "nod-system"}}}], "ports": [tcp(2379)]}])]
        self.assertEqual(self.allowed(pols), (allow("10.214.1.7", "tcp", 2379),))

    def test_namespace_selector_empty_is_every_namespace(self):
        pols = [policy("p", ingress=[{"from": [{"namespaceSelector": {}}], "ports": [tcp(2379)]}])]
        want = tuple(allow(f"10.214.1.{i}", "tcp", 2379) for i in range(2, 8))
        self.assertEqual(self.allowed(pols), want)

    def test_namespace_and_pod_selector_together(self):
        pols = [policy("p", ingress=[{"from": [{
            "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
            "podSelector": {"matchLabels": {"app": "client"}}}], "ports": [tcp(2379)]}])]
        self.assertEqual(self.allowed(pols), (allow("10.214.1.5", "tcp", 2379),))

    def test_named_port(self):
        pols = [policy("p", ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                      "ports": [{"port": "peer"}]}])]
        self.assertEqual(self.allowed(pols), (allow("10.214.1.4", "tcp", 2380),))

    def test_named_port_must_match_protocol_and_exist(self):
        for name, ports in [("gossip is UDP", [{"port": "gossip"}]),  # TCP by default
                            ("no such name", [{"port": "metrics", "protocol": "TCP"}])]:
            with self.subTest(name):
                pols = [policy("p", ingress=[{"ports": ports}])]
                self.assertEqual(self.allowed(pols), ())  # isolated, and this rule allows nothing

    def test_udp_port(self):
        pols = [policy("p", ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "nod"}}}],
                                      "ports": [{"protocol": "UDP", "port": 2382}, {"protocol": "UDP",
                                                                                    "port": "gossip"}]}])]
        self.assertEqual(self.allowed(pols), (allow("10.214.1.2", "udp", 2382), allow("10.214.1.3", "udp", 2382)))

    def test_port_range_and_protocol_without_port(self):
        pols = [policy("p", ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                      "ports": [{"port": 2379, "endPort": 2381}, {"protocol": "UDP"}]}])]
        self.assertEqual(self.allowed(pols), (allow("10.214.1.4", "tcp", 2379, 2381), allow("10.214.1.4", "udp")))

    def test_empty_from_is_anywhere(self):
        for name, rule in [("absent", {"ports": [tcp(2381)]}), ("empty", {"from": [], "ports": [tcp(2381)]})]:
            with self.subTest(name):
                self.assertEqual(self.allowed([policy("p", ingress=[rule])]),
                                 (Allow(ANYWHERE, "tcp", 2381, 2381),))

    def test_empty_rule_allows_everything(self):
        self.assertEqual(self.allowed([policy("p", ingress=[{}])]), (Allow(ANYWHERE, "all", *ALL_PORTS),))

    def test_ip_block_with_except(self):
        pols = [policy("p", ingress=[{"from": [{"ipBlock": {"cidr": "10.214.0.0/16",
                                                            "except": ["10.214.0.0/17"]}},
                                               {"ipBlock": {"cidr": "192.168.1.7/24"}},  # not strict
                                               {"ipBlock": {"cidr": "::/0"}}],  # IPv6: not enforced
                                      "ports": [tcp(2379)]}])]
        self.assertEqual(self.allowed(pols), (allow("10.214.128.0/17", "tcp", 2379),
                                              allow("192.168.1.0/24", "tcp", 2379)))

    def test_block_cidrs(self):
        cases = [
            ({"cidr": "10.0.0.0/8"}, ["10.0.0.0/8"]),
            ({"cidr": "10.0.0.0/30", "except": ["10.0.0.1/32"]}, ["10.0.0.0/32", "10.0.0.2/31"]),
            ({"cidr": "10.0.0.0/24", "except": ["10.0.0.0/24"]}, []),
            ({"cidr": "10.0.0.0/24", "except": ["10.0.0.0/16"]}, []),
            ({"cidr": "10.0.0.0/24", "except": ["10.1.0.0/16"]}, ["10.0.0.0/24"]),
            ({"cidr": "10.0.0.0/24", "except": ["10.0.0.0/25", "10.0.0.128/26"]}, ["10.0.0.192/26"]),
            ({"cidr": "fd00::/8"}, []),
            ({"cidr": "nonsense"}, []),
        ]
        for block, want in cases:
            with self.subTest(block):
                self.assertEqual(pr.block_cidrs(block), want)

    def test_two_policies_are_unioned(self):
        pols = [
            policy("clients", selector={"matchLabels": {"app": "nod"}}, ingress=[
                {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [tcp(2379)]}]),
            policy("peers", selector={"matchLabels": {"tier": "store"}}, ingress=[
                {"from": [{"podSelector": {"matchLabels": {"app": "nod"}}}], "ports": [tcp(2379), tcp(2380)]}]),
        ]
        self.assertEqual(self.allowed(pols), (
            allow("10.214.1.2", "tcp", 2379), allow("10.214.1.2", "tcp", 2380),
            allow("10.214.1.3", "tcp", 2379), allow("10.214.1.3", "tcp", 2380),
            allow("10.214.1.4", "tcp", 2379),
        ))

    def test_match_expressions_in_policy_and_peer(self):
        pols = [policy("p", selector={"matchExpressions": [{"key": "tier", "operator": "NotIn",
                                                            "values": ["web"]}]},
                       ingress=[{"from": [{"podSelector": {"matchExpressions": [
                           {"key": "app", "operator": "In", "values": ["client", "worker"]}]},
                           "namespaceSelector": {}}], "ports": [tcp(2379)]}])]
        self.assertEqual(self.allowed(pols), tuple(allow(f"10.214.1.{i}", "tcp", 2379) for i in (4, 5, 6)))
        # NotIn web also selects a pod without the label at all.
        self.assertEqual(self.allowed(pols, CLIENT_DB), self.allowed(pols))

    def test_peer_with_nothing_matches_nothing(self):
        self.assertEqual(self.allowed([policy("p", ingress=[{"from": [{}], "ports": [tcp(1)]}])]), ())

    def test_operator_rendered_policy(self):
        # The shape operator/src/render.rs gives a cluster's policy.
        sel = {"matchLabels": {"app": "nod"}}
        pols = [policy("example", selector=sel, ingress=[
            {"from": [{"podSelector": sel}], "ports": [tcp(2379), tcp(2380), {"protocol": "UDP", "port": 2382}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"team": "web"}},
                       "podSelector": {"matchLabels": {"app": "client"}}}], "ports": [tcp(2379)]},
            {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nod-system"}}}],
             "ports": [tcp(2379)]},
            {"ports": [tcp(2381)]},
        ])]
        got = self.allowed(pols)
        members = [allow(ip, proto, port) for ip in ("10.214.1.2", "10.214.1.3")
                   for proto, port in (("tcp", 2379), ("tcp", 2380), ("udp", 2382))]
        want = sorted(members + [allow("10.214.1.5", "tcp", 2379), allow("10.214.1.7", "tcp", 2379),
                                 Allow(ANYWHERE, "tcp", 2381, 2381)],
                      key=lambda a: (pr.ipaddress.ip_network(a.src), a.proto, a.port_min))
        self.assertEqual(got, tuple(want))
        self.assertNotIn("10.214.1.4/32", {a.src for a in got})  # a client in db, not selected
        self.assertEqual(got, self.allowed(list(reversed(pols))))  # stable, comparable

    def test_pod_ips(self):
        cases = [(pod("a", ip="10.214.1.9"), "10.214.1.9"), (pod("a"), None),
                 (pod("a", ip="10.214.1.9", phase="Failed"), None), (pod("a", ip="fd00::1"), None),
                 (pod("a", ip="10.214.1.9", phase="Pending"), "10.214.1.9")]
        for p, want in cases:
            with self.subTest(p["status"]):
                self.assertEqual(pr.pod_ipv4(p), want)

    def test_namespace_labels(self):
        self.assertEqual(NAMESPACES["apps"], {"team": "web", "kubernetes.io/metadata.name": "apps"})
        self.assertEqual(NAMESPACES["nod-system"], {"kubernetes.io/metadata.name": "nod-system"})


class IngressTableTest(unittest.TestCase):
    HEAD = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":NOD-INGRESS - [0:0]", "-A INPUT -j NOD-INGRESS",
            "-A NOD-INGRESS -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]

    def test_not_selected_accepts_everything(self):
        # Only the conntrack rule (which keeps conntrack on in the namespace): no DROP.
        self.assertEqual(pr.ingress_table(None).splitlines(), self.HEAD + ["COMMIT"])

    def test_deny_all_keeps_loopback_replies_and_node(self):
        self.assertEqual(pr.ingress_table(()).splitlines(), self.HEAD + [
            "-A NOD-INGRESS -i lo -j ACCEPT",
            "-A NOD-INGRESS -s 10.214.0.1/32 -j ACCEPT",
            "-A NOD-INGRESS -j DROP",
            "COMMIT",
        ])

    def test_rules(self):
        allowed = (allow("10.214.1.2", "tcp", 2379), allow("10.214.1.2", "tcp", 2379, 2381),
                   allow("10.214.1.3", "udp", 2382), allow("10.214.1.3", "udp"), allow("10.214.1.4"),
                   Allow(ANYWHERE, "tcp", 2381, 2381), Allow(ANYWHERE, "all", *ALL_PORTS))
        lines = pr.ingress_table(allowed).splitlines()
        self.assertEqual(lines[:9], self.HEAD + [
            "-A NOD-INGRESS -i lo -j ACCEPT",
            "-A NOD-INGRESS -s 10.214.0.1/32 -j ACCEPT"])
        self.assertEqual(lines[9:], [
            "-A NOD-INGRESS -s 10.214.1.2/32 -p tcp -m tcp --dport 2379 -j ACCEPT",
            "-A NOD-INGRESS -s 10.214.1.2/32 -p tcp -m tcp --dport 2379:2381 -j ACCEPT",
            "-A NOD-INGRESS -s 10.214.1.3/32 -p udp -m udp --dport 2382 -j ACCEPT",
            "-A NOD-INGRESS -s 10.214.1.3/32 -p udp -j ACCEPT",
            "-A NOD-INGRESS -s 10.214.1.4/32 -j ACCEPT",
            "-A NOD-INGRESS -p tcp -m tcp --dport 2381 -j ACCEPT",
            "-A NOD-INGRESS -j ACCEPT",
            "-A NOD-INGRESS -j DROP",
            "COMMIT",
        ])


def b64(s):
    return base64.b64encode(s.encode()).decode()


class VolumeTest(unittest.TestCase):
    """The volume sync on a temporary directory, with objects from a dict."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.objects = {}
        runner = types.SimpleNamespace(api=None, run_dir=self.tmp.name)
        p = pod("nod-0", "db", {"app": "nod"}, "10.214.1.2")
        p["spec"]["serviceAccountName"] = "nod"
        self.w = pr.PodWorker(runner, p, 1)
        self.w.ip = "10.214.1.2"
        self.w.get_object = self.get
        logs = mock.patch.object(pr, "log")
        self.log = logs.start()
        self.addCleanup(logs.stop)

    def get(self, ns, kind, name):
        return self.objects.get((ns, kind, name))

    def secret(self, name, **data):
        self.objects[("db", "secrets", name)] = {"data": {k.replace("_", "."): b64(v) for k, v in data.items()}}

    def read(self, d, rel):
        with open(os.path.join(d, rel)) as f:
            return f.read()

    def files(self, d):
        out = []
        for root, _, names in os.walk(d):
            out += [os.path.relpath(os.path.join(root, n), d) for n in names]
        return sorted(out)

    def test_write_files_atomic(self):
        d = self.tmp.name
        self.assertEqual(pr.write_files_atomic(d, {"a": b"1", "sub/b": "2"}), ["a", "sub/b"])
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(d, "a")).st_mode), 0o644)
        before = os.stat(os.path.join(d, "a"))
        os.utime(os.path.join(d, "a"), ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))
        before = os.stat(os.path.join(d, "a"))
        self.assertEqual(pr.write_files_atomic(d, {"a": b"1", "sub/b": b"3"}), ["sub/b"])
        same = os.stat(os.path.join(d, "a"))
        self.assertEqual((same.st_ino, same.st_mtime_ns), (before.st_ino, before.st_mtime_ns))
        self.assertEqual(self.read(d, "sub/b"), "3")
        self.assertEqual(self.files(d), ["a", "sub/b"])  # no temporary file left

    def test_secret_volume_follows_the_secret(self):
        self.w.pod["spec"]["volumes"] = [{"name": "tls", "secret": {"secretName": "member-tls"}}]
        self.secret("member-tls", tls_crt="cert-1", tls_key="key-1", ca_crt="ca")
        d = self.w.volume_dirs()["tls"]
        self.assertEqual(self.files(d), ["ca.crt", "tls.crt", "tls.key"])
        ca_inode = os.stat(os.path.join(d, "ca.crt")).st_ino
        crt_inode = os.stat(os.path.join(d, "tls.crt")).st_ino

        self.secret("member-tls", tls_crt="cert-2", tls_key="key-2", ca_crt="ca")
        self.w.refresh_volumes(self.get)
        self.assertEqual((self.read(d, "tls.crt"), self.read(d, "tls.key")), ("cert-2", "key-2"))
        self.assertEqual(os.stat(os.path.join(d, "ca.crt")).st_ino, ca_inode)  # untouched
        self.assertNotEqual(os.stat(os.path.join(d, "tls.crt")).st_ino, crt_inode)  # replaced, not rewritten
        self.log.assert_called_once()
        self.assertIn("updated tls.crt, tls.key", self.log.call_args[0][0])

        self.log.reset_mock()
        self.w.refresh_volumes(self.get)  # nothing changed: nothing written, nothing logged
        self.log.assert_not_called()

        self.secret("member-tls", tls_crt="cert-2", tls_key="key-2")  # a key removed
        self.w.refresh_volumes(self.get)
        self.assertEqual(self.files(d), ["tls.crt", "tls.key"])

        del self.objects[("db", "secrets", "member-tls")]  # gone: the files stay
        self.w.refresh_volumes(self.get)
        self.assertEqual(self.files(d), ["tls.crt", "tls.key"])

    def test_secret_created_after_the_pod(self):
        self.w.pod["spec"]["volumes"] = [{"name": "tls", "secret": {"secretName": "late"}}]
        d = self.w.volume_dirs()["tls"]
        self.assertEqual(self.files(d), [])
        self.secret("late", tls_crt="cert")
        self.w.refresh_volumes(self.get)
        self.assertEqual(self.files(d), ["tls.crt"])

    def test_optional_config_map_deleted_empties_its_files(self):
        self.objects[("db", "configmaps", "conf")] = {"data": {"a.conf": "x"}, "binaryData": {"b.bin": b64("y")}}
        self.w.pod["spec"]["volumes"] = [{"name": "conf", "configMap": {"name": "conf", "optional": True}}]
        d = self.w.volume_dirs()["conf"]
        self.assertEqual((self.read(d, "a.conf"), self.read(d, "b.bin")), ("x", "y"))
        del self.objects[("db", "configmaps", "conf")]
        self.w.refresh_volumes(self.get)
        self.assertEqual(self.files(d), [])

    def test_projected_volume_items_and_downward_api_but_not_the_token(self):
        self.secret("member-tls", tls_crt="cert-1", tls_key="key-1")
        self.objects[("db", "configmaps", "conf")] = {"data": {"a": "1"}}
        self.w.pod["spec"]["volumes"] = [{"name": "all", "projected": {"sources": [
            {"secret": {"name": "member-tls", "items": [{"key": "tls.crt", "path": "certs/server.crt"}]}},
            {"configMap": {"name": "conf"}},
            {"downwardAPI": {"items": [{"path": "labels/app", "fieldRef": {
                "fieldPath": "metadata.labels['app']"}}]}},
            {"serviceAccountToken": {"path": "token"}},
        ]}}]
        api = mock.Mock()
        api.request.return_value = {"status": {"token": "token-1"}}
        self.w.api = api
        d = self.w.volume_dirs()["all"]
        self.assertEqual(self.files(d), ["a", "certs/server.crt", "labels/app", "token"])
        self.assertEqual(api.request.call_count, 1)

        self.secret("member-tls", tls_crt="cert-2", tls_key="key-2")
        self.objects[("db", "configmaps", "conf")] = {"data": {"b": "2"}}
        self.w.pod["metadata"]["labels"]["app"] = "nod-2"
        self.w.refresh_volumes(self.get)
        self.assertEqual(self.files(d), ["b", "certs/server.crt", "labels/app", "token"])
        self.assertEqual((self.read(d, "certs/server.crt"), self.read(d, "labels/app"), self.read(d, "token")),
                         ("cert-2", "nod-2", "token-1"))
        self.assertEqual(api.request.call_count, 1)  # no new token


class EnforceIngressTest(unittest.TestCase):
    """What the worker runs, with subprocess stubbed: only on a change."""

    def test_installs_only_on_change(self):
        runner = types.SimpleNamespace(api=None, run_dir="/nonexistent")
        w = pr.PodWorker(runner, MEMBER_0, 7)
        pols = [policy("p", selector={"matchLabels": {"app": "nod"}}, ingress=[{"ports": [tcp(2379)]}])]
        with mock.patch.object(pr.subprocess, "run") as run, mock.patch.object(pr, "log") as log:
            run.return_value = types.SimpleNamespace(returncode=0, stderr="")
            w.enforce_ingress([], PODS, NAMESPACES)  # no policy, no rules yet: nothing to do
            run.assert_not_called()
            w.enforce_ingress(pols, PODS, NAMESPACES)
            self.assertEqual(run.call_count, 1)
            args, kwargs = run.call_args
            self.assertEqual(args[0], ["ip", "netns", "exec", "nodk8s-7", "iptables-restore", "--wait=5"])
            self.assertIn("-A NOD-INGRESS -p tcp -m tcp --dport 2379 -j ACCEPT", kwargs["input"])
            self.assertIn("1 rules, 1 sources, 1 protocol/port ranges", log.call_args[0][0])
            w.enforce_ingress(pols, PODS, NAMESPACES)  # the same: nothing to do
            self.assertEqual(run.call_count, 1)
            w.enforce_ingress([], PODS, NAMESPACES)  # policy gone: the chain accepts everything
            self.assertEqual(run.call_count, 2)
            self.assertNotIn("DROP", run.call_args[1]["input"])
            self.assertEqual(run.call_args[1]["input"], pr.ingress_table(None))
            self.assertIsNone(w.ingress)

            run.return_value = types.SimpleNamespace(returncode=1, stderr="no iptables")
            w.enforce_ingress(pols, PODS, NAMESPACES)
            w.enforce_ingress(pols, PODS, NAMESPACES)  # tried again, logged once
            self.assertEqual(run.call_count, 4)
            self.assertEqual(sum("no iptables" in c[0][0] for c in log.call_args_list), 1)
            self.assertIsNone(w.ingress)


if __name__ == "__main__":
    unittest.main()
