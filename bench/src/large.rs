//! A large database: put and range throughput (our client, 256 clients)
//! before and after a system grows to `bytes` of live data in values of
//! `value_size` bytes (put right after the load too, then again once the
//! members are idle: an LSM store compacts what the load wrote for a
//! while after it, which a database that grew over days has long done),
//! a count of every key (one `count_only` range), and the time from a
//! restart to ready at that size.

use std::time::{Duration, Instant};

use nod_proto::etcd::etcdserverpb::kv_client::KvClient;
use nod_proto::etcd::etcdserverpb::RangeRequest;

use crate::workload::Conn;

#[derive(Clone, Debug)]
pub struct Spec {
    /// Live bytes of values to grow to.
    pub bytes: u64,
    pub value_size: usize,
}

impl Spec {
    pub fn keys(&self) -> u64 {
        self.bytes / self.value_size.max(1) as u64
    }
}

/// One system's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Large {
    pub put_empty: f64,
    /// Put throughput at once after the load.
    pub put_loaded: f64,
    /// Seconds from the end of that round until the members were idle.
    pub settle_secs: f64,
    pub put_large: f64,
    pub range_empty: f64,
    pub range_large: f64,
    /// Seconds to write the data set.
    pub load_secs: f64,
    /// Seconds for a `count_only` range over every key, and the count.
    pub count_secs: f64,
    pub counted: i64,
    pub restart_secs: f64,
    /// Bytes on disk in one member's data directory at that size.
    pub disk: u64,
}

pub fn large_key(i: u64) -> Vec<u8> {
    format!("large/{i:09}").into_bytes()
}

/// Writes the data set, 128 puts at a time; returns the seconds it took.
/// Values differ per key (a compressor finds little to share).
pub async fn grow(conns: &[Conn], spec: &Spec) -> Result<f64, String> {
    let start = Instant::now();
    let size = spec.value_size;
    crate::workload::put_all(conns, spec.keys(), 128, move |i| {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i + 1);
        let mut value = Vec::with_capacity(size + 8);
        while value.len() < size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            value.extend_from_slice(&x.to_le_bytes());
        }
        value.truncate(size);
        (large_key(i), value)
    })
    .await
    .map_err(|e| format!("grow: {e}"))?;
    Ok(start.elapsed().as_secs_f64())
}

/// Waits until the members are idle: together under a tenth of a core
/// over 3 s (background compactions of the load done), at most `cap`;
/// returns the seconds waited.
pub async fn settle(cluster: &crate::cluster::Cluster, cap: Duration) -> f64 {
    let start = Instant::now();
    let window = Duration::from_secs(3);
    loop {
        let before = cluster.cpu_ns();
        tokio::time::sleep(window).await;
        let used = cluster.cpu_ns().saturating_sub(before);
        if (used as f64) < 0.1 * window.as_nanos() as f64 || start.elapsed() >= cap {
            return start.elapsed().as_secs_f64();
        }
    }
}

/// A `count_only` range over every key: seconds and the count.
pub async fn count_all(conn: &Conn) -> Result<(f64, i64), String> {
    let start = Instant::now();
    let r = KvClient::new(conn.clone())
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("count: {e}"))?
        .into_inner();
    Ok((start.elapsed().as_secs_f64(), r.count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_set_has_the_size_asked() {
        let s = Spec {
            bytes: 8 << 30,
            value_size: 8192,
        };
        assert_eq!(s.keys(), 1 << 20);
        assert!(large_key(1) < large_key(2));
        assert!(large_key(999_999_999).starts_with(b"large/"));
    }
}
