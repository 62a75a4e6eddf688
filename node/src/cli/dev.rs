//! `nod dev`: a whole local cluster on loopback in one process, for
//! development.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::signal::stop_signal;
use super::LogFormat;
use crate::server::{self, ServerConfig};

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
    let initial: Vec<(String, String)> = members
        .iter()
        .map(|(name, _, p, _)| (name.clone(), format!("http://{p}")))
        .collect();
    let mut servers = Vec::new();
    for (name, c, p, m) in &members {
        let mut cfg = ServerConfig::local(name, flags.data_dir.join(name), *c, *p);
        cfg.listen_metrics = Some(*m);
        cfg.initial_cluster = initial.clone();
        cfg.initial_cluster_token = "nod-dev".into();
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
    let endpoints: Vec<String> = servers.iter().map(|s| s.client_addr.to_string()).collect();
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
    println!(
        "try:  etcdctl --endpoints={} put hello world",
        endpoints.join(",")
    );
    println!(
        "      nod --endpoints={} get hello   (Ctrl-C stops the cluster)",
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
