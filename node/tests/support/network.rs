//! Test hosts in network namespaces: a bridge in the root namespace, one
//! namespace per node joined to it by a veth pair, each with its own
//! private address; faults are iptables rules inside a node's namespace.
//! Everything is created by the test (as root) and removed on drop.

use std::process::Command;

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub struct Network {
    bridge: String,
    /// The bridge's address: where the root namespace (clients, proxies) is reachable.
    pub gateway: String,
    /// (namespace, address) per node.
    pub nodes: Vec<(String, String)>,
    /// When peers reach node i through a proxy on the gateway at this port,
    /// faults between nodes block those ports instead of node addresses.
    pub proxy_ports: Option<Vec<u16>>,
}

impl Network {
    /// Creates `n` namespaces on a fresh bridge, or explains why it cannot
    /// (not root, no iproute2 or iptables).
    pub fn create(n: usize) -> Result<Network, String> {
        let tag = std::process::id() % 10_000;
        let subnet = 100 + (std::process::id() % 150);
        let mut net = Network {
            bridge: format!("nodbr{tag}"),
            gateway: format!("10.213.{subnet}.1"),
            nodes: Vec::new(),
            proxy_ports: None,
        };
        run(&["iptables", "-V"]).map_err(|e| format!("iptables is missing ({e})"))?;
        run(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.213.{subnet}.1/24"),
            "dev",
            &net.bridge,
        ])?;
        run(&["ip", "link", "set", &net.bridge, "up"])?;
        for i in 0..n {
            let ns = format!("nod{tag}n{i}");
            let veth = format!("nv{tag}n{i}");
            let addr = format!("10.213.{subnet}.{}", 10 + i);
            run(&["ip", "netns", "add", &ns])?;
            net.nodes.push((ns.clone(), addr.clone()));
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &veth, "master", &net.bridge])?;
            run(&["ip", "link", "set", &veth, "up"])?;
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            run(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up",
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn iptables(&self, node: usize, rule: &[&str]) {
        let ns = &self.nodes[node].0;
        let mut args = vec!["ip", "netns", "exec", ns, "iptables"];
        args.extend_from_slice(rule);
        if let Err(e) = run(&args) {
            eprintln!("network fault not applied: {e}");
        }
    }

    /// `to` stops hearing `from` (one way: Raft messages travel on the
    /// sender's own connection, so `to` still reaches `from`).
    pub fn drop_from(&self, to: usize, from: usize) {
        match &self.proxy_ports {
            Some(ports) => {
                let port = ports[to].to_string();
                let gw = self.gateway.clone();
                self.iptables(
                    from,
                    &[
                        "-A", "OUTPUT", "-p", "tcp", "-d", &gw, "--dport", &port, "-j", "DROP",
                    ],
                );
            }
            None => {
                let src = self.nodes[from].1.clone();
                self.iptables(to, &["-A", "INPUT", "-s", &src, "-j", "DROP"]);
            }
        }
    }

    /// `a` and `b` cannot talk.
    pub fn partition(&self, a: usize, b: usize) {
        self.drop_from(a, b);
        self.drop_from(b, a);
    }

    /// `node` hears no other node (clients still reach it).
    pub fn isolate(&self, node: usize) {
        for other in 0..self.nodes.len() {
            if other != node {
                self.partition(node, other);
            }
        }
    }

    /// `node` drops this share of the packets it receives.
    pub fn loss(&self, node: usize, probability: f64) {
        let p = format!("{probability:.2}");
        self.iptables(
            node,
            &[
                "-A",
                "INPUT",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        );
    }

    /// Removes every fault.
    pub fn heal(&self) {
        for i in 0..self.nodes.len() {
            self.iptables(i, &["-F", "INPUT"]);
            self.iptables(i, &["-F", "OUTPUT"]);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for (ns, _) in &self.nodes {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}
