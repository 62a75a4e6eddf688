//! `nod-operator`: runs the controller (`run`), prints the CRD (`crd`) or the
//! objects a NodCluster turns into (`render`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::{Api, ResourceExt};
use nod_operator::controller::{error_policy, reconcile, reconcile_trigger, Context};
use nod_operator::crd::NodCluster;
use nod_operator::lease::LeaseLock;
use nod_operator::metrics::Metrics;
use nod_operator::nodapi::NodApi;

#[derive(Parser)]
#[command(
    name = "nod-operator",
    version,
    about = "Kubernetes operator for Nod clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the NodCluster CustomResourceDefinition as YAML.
    Crd,
    /// Prints the objects a NodCluster (read from a YAML file) turns into.
    Render {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// The StatefulSet's replicas (default: the spec's).
        #[arg(long)]
        replicas: Option<i32>,
        /// The operator's namespace, which the NetworkPolicy lets reach
        /// the client port.
        #[arg(long, default_value = "nod-system")]
        operator_namespace: String,
    },
    /// Runs the controller.
    Run {
        /// Namespaces to watch (repeat); all namespaces when none is given.
        #[arg(
            long = "namespace",
            env = "NOD_OPERATOR_NAMESPACES",
            value_delimiter = ','
        )]
        namespaces: Vec<String>,
        /// Serves /metrics and /healthz.
        #[arg(
            long,
            env = "NOD_OPERATOR_METRICS_ADDR",
            default_value = "0.0.0.0:8080"
        )]
        metrics_addr: SocketAddr,
        #[arg(long, env = "NOD_OPERATOR_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
        log_format: String,
        /// The Lease that elects one active replica.
        #[arg(long, default_value = "nod-operator")]
        lease_name: String,
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// This replica's identity in the Lease.
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Where the operator writes its client certificates for clusters
        /// with TLS (a writable directory: an emptyDir in the chart).
        #[arg(long, env = "NOD_OPERATOR_STATE_DIR", default_value_os_t = std::env::temp_dir().join("nod-operator"))]
        state_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", nod_operator::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Render {
            file,
            replicas,
            operator_namespace,
        } => match render(&file, replicas, &operator_namespace) {
            Ok(s) => {
                print!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nod-operator: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            namespaces,
            metrics_addr,
            log_format,
            lease_name,
            lease_namespace,
            identity,
            state_dir,
        } => {
            init_logging(&log_format);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("nod-operator: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(
                namespaces,
                metrics_addr,
                lease_name,
                lease_namespace,
                identity,
                state_dir,
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn render(
    file: &PathBuf,
    replicas: Option<i32>,
    operator_namespace: &str,
) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut nc: NodCluster = serde_yaml::from_str(&text)
        .map_err(|e| format!("{}: not a NodCluster: {e}", file.display()))?;
    let problems = nc.spec.validate();
    if !problems.is_empty() {
        return Err(format!("{}: {}", file.display(), problems.join("; ")));
    }
    nc.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    nc.metadata
        .uid
        .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
    let shape = nod_operator::render::Shape {
        replicas: replicas.unwrap_or(nc.spec.replicas),
        ..nod_operator::render::Shape::new(nc.spec.replicas)
    };
    let mut out = String::new();
    for obj in nod_operator::render::all(&nc, &shape, Some(operator_namespace)) {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&obj).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

async fn serve_metrics(addr: SocketAddr, metrics: Metrics) -> Result<(), String> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("metrics address {addr}: {e}"))?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

async fn run(
    namespaces: Vec<String>,
    metrics_addr: SocketAddr,
    lease_name: String,
    lease_namespace: String,
    identity: Option<String>,
    state_dir: PathBuf,
) -> Result<(), String> {
    let metrics = Metrics::new();
    tokio::spawn({
        let m = metrics.clone();
        async move {
            if let Err(e) = serve_metrics(metrics_addr, m).await {
                tracing::error!("{e}");
                std::process::exit(1);
            }
        }
    });
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes API: {e}"))?;
    // Without POD_NAME (the chart sets it), the host name and a random
    // suffix: a pid alone is 1 in every container, and two replicas with
    // one identity would both take the Lease for theirs.
    let identity = identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        format!("nod-operator-{host}-{:016x}", rand_suffix())
    });

    // Leader election: act only once the Lease is ours, and stop acting
    // (exit: Kubernetes restarts the process as a follower) the moment it
    // cannot be renewed in time.
    let lock = LeaseLock::new(
        client.clone(),
        &lease_namespace,
        &lease_name,
        &identity,
        Duration::from_secs(15),
    );
    let acquired = lock.acquire().await;
    tracing::info!(identity = %identity, "leading");
    tokio::spawn(async move {
        let lost = lock.keep_renewing(acquired).await;
        tracing::error!("{lost}; exiting so that two replicas never act at once");
        std::process::exit(1);
    });

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "nod-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    let mut ctx = Context::new(client.clone(), NodApi::default(), metrics, Some(recorder));
    ctx.state_dir = state_dir;
    // The operator runs in the Lease's namespace (the chart's POD_NAMESPACE).
    ctx.operator_namespace = Some(lease_namespace.clone());
    let ctx = Arc::new(ctx);
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let controllers = scopes.into_iter().map(|ns| {
        let c = client.clone();
        let ctx = ctx.clone();
        fn api<K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>>(
            c: &kube::Client,
            ns: &Option<String>,
        ) -> Api<K>
        where
            K::DynamicType: Default,
        {
            match ns {
                Some(n) => Api::namespaced(c.clone(), n),
                None => Api::all(c.clone()),
            }
        }
        let wc = watcher::Config::default();
        // Only spec changes (and the deletion mark) trigger a reconcile from
        // the NodCluster's own watch; status writes do not. The cluster is
        // observed on the timer each reconcile sets, and on changes of the
        // objects it owns.
        let (reader, writer) = reflector::store();
        let metrics = ctx.metrics.clone();
        let clusters = watcher(api::<NodCluster>(&c, &ns), wc.clone())
            .default_backoff()
            .reflect(writer)
            // A deleted cluster is never reconciled again: its series go here.
            .inspect_ok(move |event| {
                if let watcher::Event::Delete(nc) = event {
                    metrics.forget_backups(
                        &nc.namespace().unwrap_or_else(|| "default".into()),
                        &nc.name_any(),
                    );
                }
            })
            .applied_objects()
            .predicate_filter(reconcile_trigger, Default::default());
        Controller::for_stream(clusters, reader)
            .owns(api::<StatefulSet>(&c, &ns), wc.clone())
            .owns(api::<Service>(&c, &ns), wc.clone())
            .owns(api::<ServiceAccount>(&c, &ns), wc.clone())
            .owns(api::<PodDisruptionBudget>(&c, &ns), wc)
            .shutdown_on_signal()
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                match r {
                    Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
                    Err(e) => tracing::debug!(error = %e, "reconcile"),
                }
            })
    });
    futures::future::join_all(controllers).await;
    Ok(())
}

/// A random 64-bit number from the standard library's randomly keyed hasher
/// (no RNG crate for one identity).
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}
