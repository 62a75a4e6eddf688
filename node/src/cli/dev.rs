//! `nod dev`: a whole local cluster on loopback in one process, for
//! development.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::signal::stop_signal;
use super::LogFormat;
use crate::server::{self, ServerConfig};
use crate::tls::pki::{Ca, Usage, Written};
use crate::tls::ServerTlsOptions;

#[derive(Args)]
pub struct DevFlags {
    /// How many members.
    #[arg(long, env = "NOD_DEV_NODES", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub nodes: u16,
    /// Where the members keep their data (one folder each).
    #[arg(long, env = "NOD_DEV_DATA_DIR", default_value = "./nod-data")]
    pub data_dir: PathBuf,
    /// Member i serves clients on base+100*i, peers on base+100*i+1, metrics on base+100*i+2.
    #[arg(long, env = "NOD_DEV_BASE_PORT", default_value_t = 2379)]
    pub base_port: u16,
    #[arg(long, env = "NOD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve clients and peers over TLS, with client certificates required:
    /// makes a CA, a member certificate and a client certificate under
    /// <data-dir>/tls (kept across runs) and prints their paths.
    #[arg(long, env = "NOD_DEV_TLS")]
    pub tls: bool,
    #[command(flatten)]
    pub tracing: super::server::TracingFlags,
}

/// The files `nod dev --tls` serves and prints.
struct DevTls {
    ca: PathBuf,
    member: Written,
    client: Written,
}

/// Makes the dev cluster's CA and certificates, or reuses them.
fn dev_tls(dir: &Path) -> Result<DevTls, String> {
    let ca_path = dir.join("ca.pem");
    let member = Written {
        cert: dir.join("member.pem"),
        key: dir.join("member-key.pem"),
    };
    let client = Written {
        cert: dir.join("client.pem"),
        key: dir.join("client-key.pem"),
    };
    let all = [
        &ca_path,
        &member.cert,
        &member.key,
        &client.cert,
        &client.key,
    ];
    if all.iter().all(|p| p.exists()) {
        return Ok(DevTls {
            ca: ca_path,
            member,
            client,
        });
    }
    let fail =
        |e: &dyn std::fmt::Display| format!("cannot make certificates in {}: {e}", dir.display());
    let ca = Ca::new("nod dev CA").map_err(|e| fail(&e))?;
    let sans: Vec<String> = ["127.0.0.1", "::1", "localhost"].map(String::from).to_vec();
    let member = ca
        .issue("nod-dev-member", &sans, Usage::Peer)
        .map_err(|e| fail(&e))?
        .write(dir, "member")
        .map_err(|e| fail(&e))?;
    // The common name is the user once auth is on: root, as etcd's docs do.
    let client = ca
        .issue("root", &[], Usage::Client)
        .map_err(|e| fail(&e))?
        .write(dir, "client")
        .map_err(|e| fail(&e))?;
    let ca = ca.write(dir, "ca").map_err(|e| fail(&e))?;
    Ok(DevTls { ca, member, client })
}

fn server_tls(t: &DevTls) -> ServerTlsOptions {
    let mut o = ServerTlsOptions::new(t.member.cert.clone(), t.member.key.clone());
    o.trusted_ca_file = Some(t.ca.clone());
    o.client_cert_auth = true;
    o
}

pub async fn run(flags: DevFlags) -> ExitCode {
    let n = flags.nodes;
    let port = |i: u16, k: u16| -> Option<u16> { flags.base_port.checked_add(i * 100 + k) };
    let mut members = Vec::new();
    for i in 0..n {
        let (Some(c), Some(p), Some(m)) = (port(i, 0), port(i, 1), port(i, 2)) else {
            eprintln!(
                "nod dev: --base-port {} leaves no room for {n} members",
                flags.base_port
            );
            return ExitCode::from(2);
        };
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        members.push((format!("node-{}", i + 1), addr(c), addr(p), addr(m)));
    }
    let tls = if flags.tls {
        match dev_tls(&flags.data_dir.join("tls")) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("nod dev: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let initial: Vec<(String, String)> = members
        .iter()
        .map(|(name, _, p, _)| (name.clone(), format!("{scheme}://{p}")))
        .collect();
    let mut servers = Vec::new();
    for (name, c, p, m) in &members {
        let mut cfg = ServerConfig::local(name, flags.data_dir.join(name), *c, *p);
        cfg.listen_metrics = Some(*m);
        cfg.initial_cluster = initial.clone();
        cfg.initial_cluster_token = "nod-dev".into();
        if let Some(t) = &tls {
            cfg.advertise_client = format!("https://{c}");
            cfg.advertise_peer = format!("https://{p}");
            cfg.client_tls = Some(server_tls(t));
            cfg.peer_tls = Some(server_tls(t));
        }
        match server::start(cfg).await {
            Ok(s) => servers.push(s),
            Err(e) => {
                eprintln!("nod dev: {name}: {e}");
                for s in servers {
                    let _ = s.shutdown().await;
                }
                return ExitCode::FAILURE;
            }
        }
    }
    let endpoints: Vec<String> = servers
        .iter()
        .map(|s| match &tls {
            Some(_) => format!("https://{}", s.client_addr),
            None => s.client_addr.to_string(),
        })
        .collect();
    // Wait for a leader so the first command a user types works.
    for _ in 0..100 {
        if servers.iter().any(|s| s.shared.status().leader != 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("nod dev: {n} members, data in {}", flags.data_dir.display());
    println!("endpoints: {}", endpoints.join(","));
    println!(
        "metrics: {}",
        servers
            .iter()
            .filter_map(|s| s.metrics_addr.map(|a| format!("http://{a}/metrics")))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(a) = servers.first().and_then(|s| s.metrics_addr) {
        println!("console: http://{a}/ui");
    }
    let tls_flags = match &tls {
        Some(t) => {
            println!("cacert: {}", t.ca.display());
            println!("cert: {}", t.client.cert.display());
            println!("key: {}", t.client.key.display());
            format!(
                " --cacert={} --cert={} --key={}",
                t.ca.display(),
                t.client.cert.display(),
                t.client.key.display()
            )
        }
        None => String::new(),
    };
    println!(
        "try:  etcdctl --endpoints={}{tls_flags} put hello world",
        endpoints.join(",")
    );
    println!(
        "      nod --endpoints={}{tls_flags} get hello   (Ctrl-C stops the cluster)",
        endpoints.join(",")
    );
    stop_signal().await;
    println!("nod dev: stopping");
    let mut ok = true;
    for s in servers {
        if let Err(e) = s.shutdown().await {
            eprintln!("nod dev: {e}");
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
