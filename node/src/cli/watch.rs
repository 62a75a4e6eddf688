//! `nod watch`: prints the events of a key or range until interrupted.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use nod_client::ClientError;
use nod_proto::etcd::etcdserverpb::WatchCreateRequest;
use nod_proto::etcd::mvccpb::event::EventType;
use serde_json::json;

use super::client::{kv_json, print_json, text, usage, ClientFlags, Failure, Output};
use super::kv::SpanFlags;
use super::signal::stop_signal;

#[derive(Args)]
pub struct WatchArgs {
    pub key: String,
    pub range_end: Option<String>,
    #[command(flatten)]
    pub span: SpanFlags,
    /// Start at this revision (replaying history).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Include previous values.
    #[arg(long)]
    pub prev_kv: bool,
    /// Exit after this many events.
    #[arg(long)]
    pub max_events: Option<u64>,
}

pub async fn watch(args: WatchArgs, client: ClientFlags) -> Result<ExitCode, Failure> {
    let WatchArgs {
        key,
        range_end,
        span,
        rev,
        prev_kv,
        max_events,
    } = args;
    let span = span.span(&range_end).map_err(usage)?;
    let mut c = client.client_for(&client.endpoints, Duration::from_secs(u64::MAX / 4))?;
    let create = WatchCreateRequest {
        range_end: span.range_end(key.as_bytes()),
        key: key.into_bytes(),
        start_revision: rev,
        prev_kv,
        ..Default::default()
    };
    let (_tx, mut stream) = c.watch(create).await?;
    let mut seen = 0u64;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m.map_err(ClientError::from)?,
            _ = stop_signal() => return Ok(ExitCode::SUCCESS),
        };
        let Some(resp) = msg else {
            eprintln!("Error: watch stream closed by the server");
            return Ok(ExitCode::from(3));
        };
        if resp.canceled {
            eprintln!("Error: watch canceled: {}", resp.cancel_reason);
            return Ok(ExitCode::FAILURE);
        }
        for ev in resp.events {
            let kv = ev.kv.unwrap_or_default();
            let kind = if ev.r#type == EventType::Delete as i32 {
                "DELETE"
            } else {
                "PUT"
            };
            match client.output {
                Output::Json => print_json(json!({
                    "type": kind,
                    "kv": kv_json(&kv),
                    "prev_kv": ev.prev_kv.as_ref().map(kv_json),
                })),
                Output::Simple | Output::Table | Output::Fields => {
                    println!("{kind}");
                    if let Some(p) = &ev.prev_kv {
                        println!("{}\n{}", text(&p.key), text(&p.value));
                    }
                    println!("{}", text(&kv.key));
                    if kind == "PUT" {
                        println!("{}", text(&kv.value));
                    }
                }
            }
            seen += 1;
            if max_events.is_some_and(|m| seen >= m) {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}
