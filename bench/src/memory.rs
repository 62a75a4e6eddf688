//! Memory: each system's peak resident set per member (VmHWM, reset before
//! each case through /proc/<pid>/clear_refs) at rest with `keys` keys,
//! under `watchers` watchers with writes flowing, and while one client
//! reads `big_bytes` of values in one range, then in pages of 10,000 keys.

use std::time::Duration;

use nod_proto::etcd::etcdserverpb::kv_client::KvClient;
use nod_proto::etcd::etcdserverpb::watch_client::WatchClient;
use nod_proto::etcd::etcdserverpb::{watch_request, PutRequest, WatchCreateRequest, WatchRequest};

use crate::cluster::Cluster;
use nod_client::prefix_end;

use crate::workload::{list_pages, Conn};

#[derive(Clone, Debug)]
pub struct Spec {
    /// Keys of 256 bytes for the at-rest case.
    pub keys: u64,
    pub watchers: usize,
    /// Bytes of 1 KiB values the range cases read.
    pub big_bytes: u64,
    /// How long the at-rest case rests, and the watchers' writes last.
    pub secs: u64,
}

/// The cases, in the report's order.
pub const CASES: [&str; 4] = [
    "at rest",
    "under the watchers, writes flowing",
    "one range of every big value",
    "the same in pages of 10,000",
];

/// Peak RSS per member in bytes, or why the case failed.
pub type Peaks = Vec<Result<u64, String>>;

const BIG_VALUE: usize = 1024;
const PAGE: i64 = 10_000;

fn big_key(i: u64) -> Vec<u8> {
    format!("big/{i:08}").into_bytes()
}

/// Puts `count` keys made by `key` with `size`-byte values, 64 at a time.
async fn fill(
    conns: &[Conn],
    count: u64,
    size: usize,
    key: fn(u64) -> Vec<u8>,
) -> Result<(), String> {
    crate::workload::put_all(conns, count, 64, move |i| (key(i), vec![b'b'; size]))
        .await
        .map_err(|e| format!("fill: {e}"))
}

/// The watchers (one stream each, spread over `conns`, each on its own
/// key), then `secs` of 1000 writes a second to those keys; returns once
/// the writes are done (the watchers are dropped).
async fn watchers_with_writes(conns: &[Conn], watchers: usize, secs: u64) -> Result<(), String> {
    let wkey = |i: usize| format!("watched/{i:06}").into_bytes();
    let mut streams = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers.max(1));
    for w in 0..watchers {
        let mut client = WatchClient::new(conns[w % conns.len()].clone());
        let ready = ready_tx.clone();
        let key = wkey(w);
        streams.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx
                .send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(
                        WatchCreateRequest {
                            key,
                            prev_kv: true,
                            ..Default::default()
                        },
                    )),
                })
                .await;
            let stream =
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|v| (v, rx)) },
                );
            let Ok(resp) = client.watch(stream).await else {
                return;
            };
            let mut resp = resp.into_inner();
            let mut announced = false;
            while let Ok(Some(m)) = resp.message().await {
                if m.created && !announced {
                    announced = true;
                    let _ = ready.send(()).await;
                }
            }
            drop(tx);
        }));
    }
    drop(ready_tx);
    for _ in 0..watchers {
        match tokio::time::timeout(Duration::from_secs(30), ready_rx.recv()).await {
            Ok(Some(())) => {}
            _ => return Err("the watchers were not all created within 30 s".into()),
        }
    }
    let mut kv = KvClient::new(conns[0].clone());
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for n in 0..(secs as usize * 1000) {
        tick.tick().await;
        kv.put(PutRequest {
            key: wkey((n * 7919) % watchers.max(1)),
            value: vec![b'x'; 256],
            ..Default::default()
        })
        .await
        .map_err(|e| format!("write under the watchers: {e}"))?;
    }
    for s in streams {
        s.abort();
    }
    Ok(())
}

/// Reads every big value: in one range (`page` 0) or in pages.
async fn read_big(conn: &Conn, page: i64) -> Result<u64, String> {
    let mut kv = KvClient::new(conn.clone()).max_decoding_message_size(usize::MAX);
    let mut bytes = 0u64;
    list_pages(&mut kv, b"big/".to_vec(), prefix_end(b"big/"), page, |r| {
        bytes += r.kvs.iter().map(|kv| kv.value.len() as u64).sum::<u64>();
    })
    .await
    .map_err(|e| format!("{}: {}", e.code(), e.message()))?;
    Ok(bytes)
}

/// Every case on one system; `leader` serves the reads. Returns one entry
/// per `CASES`.
pub async fn run(cluster: &Cluster, conns: &[Conn], leader: &Conn, spec: &Spec) -> Peaks {
    let mut out = Vec::new();
    let at_rest = async {
        fill(conns, spec.keys, 256, crate::workload::key).await?;
        cluster.reset_peak_rss()?;
        tokio::time::sleep(Duration::from_secs(spec.secs)).await;
        Ok::<u64, String>(cluster.peak_rss())
    }
    .await;
    out.push(at_rest);
    let watching = async {
        cluster.reset_peak_rss()?;
        watchers_with_writes(conns, spec.watchers, spec.secs).await?;
        Ok::<u64, String>(cluster.peak_rss())
    }
    .await;
    out.push(watching);
    let big_keys = spec.big_bytes / BIG_VALUE as u64;
    if let Err(e) = fill(conns, big_keys, BIG_VALUE, big_key).await {
        out.push(Err(e.clone()));
        out.push(Err(e));
        return out;
    }
    for page in [0, PAGE] {
        let case = async {
            cluster.reset_peak_rss()?;
            let read = read_big(leader, page).await?;
            if read != big_keys * BIG_VALUE as u64 {
                return Err(format!(
                    "read {read} bytes of {}",
                    big_keys * BIG_VALUE as u64
                ));
            }
            Ok::<u64, String>(cluster.peak_rss())
        }
        .await;
        out.push(case);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_keys_sort_under_their_prefix() {
        let end = prefix_end(b"big/");
        assert_eq!(end, b"big0".to_vec());
        for i in [0u64, 1, 99_999_999] {
            let k = big_key(i);
            assert!(k.as_slice() >= b"big/".as_slice() && k < end);
        }
        assert!(big_key(9) < big_key(10), "zero-padded: in order");
    }
}
