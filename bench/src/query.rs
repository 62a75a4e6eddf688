//! `nod-bench query`: secondary indexes and queries, against etcd with
//! the client doing the filtering (docs/research/beyond-etcd.md §7).
//!
//! - Data: `--docs` JSON documents `/users/%07d` → `{name, email, city (1
//!   of 50), age (0–99)}`, about 100 bytes each, in a 3-member Nod cluster
//!   and a 3-member etcd cluster; on Nod, an index on `(city, age)`.
//! - Queries, each `--rounds` times round robin, `--repeat` calls a round:
//!   "how many users in Oslo are over 30" (COUNT) and "the ten oldest
//!   adults in Oslo" (ORDER BY age DESC LIMIT 10); on Nod through the index and
//!   forced to a prefix scan, on etcd as a client must: a `Range` of
//!   `/users/` in pages of 10,000, every value parsed and filtered. Every
//!   system's answer is checked against the one the data makes.
//! - Write cost: puts of documents from `--clients` clients for
//!   `--seconds` over three prefixes of `--write-keys` keys each (already
//!   written, so each put replaces a document and its entries) with 0, 1
//!   and 3 indexes on them, in `--write-rounds` rounds that take the
//!   prefixes in turn (the order reversed every other round, as the main
//!   benchmark alternates systems); the median round, and how long the
//!   one index took to build over its documents.
//!
//! Prints a Markdown report and writes it to `--out/query.md`.

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nod_proto::etcd::etcdserverpb::kv_client::KvClient;
use nod_proto::etcd::etcdserverpb::PutRequest;
use nod_proto::nodquerypb::index_client::IndexClient;
use nod_proto::nodquerypb::query_client::QueryClient;
use nod_proto::nodquerypb::query_request::Plan;
use nod_proto::nodquerypb::{
    index_def, FieldType, IndexCreateRequest, IndexDescribeRequest, IndexField, IndexSpec,
    QueryRequest,
};

use crate::cluster::{Cluster, System};
use crate::workload::{self, Access, Conn};

const CITIES: usize = 50;
/// The fields of the `(city, age)` indexes.
const CITY_AGE: &[(&str, FieldType)] = &[("city", FieldType::String), ("age", FieldType::Number)];
/// The city the queries ask for (city 0).
const OSLO: &str = "Oslo";
/// The write-cost prefixes, with the indexes each has.
const WRITE_SETS: [(&str, &str); 3] = [
    ("/w0/", "0 indexes"),
    ("/w1/", "1 index (city)"),
    ("/w3/", "3 indexes (city; city, age; email)"),
];
/// etcd's page size for the client-side scan.
const PAGE: i64 = 10_000;

pub struct Args {
    pub docs: u64,
    pub rounds: usize,
    pub repeat: usize,
    pub clients: usize,
    pub seconds: u64,
    pub write_keys: u64,
    pub write_rounds: usize,
}

fn city(i: u64) -> String {
    match i % CITIES as u64 {
        0 => OSLO.to_string(),
        c => format!("City {c:02}"),
    }
}

/// Document `i` (deterministic: every system holds the same data).
fn doc(i: u64) -> Vec<u8> {
    let age = age_of(i);
    format!(
        r#"{{"name":"user {i}","email":"user{i}@example.com","city":"{}","age":{age}}}"#,
        city(i)
    )
    .into_bytes()
}

fn age_of(i: u64) -> u64 {
    (i * 37 + i / 50) % 100
}

/// What the two queries must answer over documents `0..docs`: the count
/// of Oslo users over 30, and the keys of the ten oldest (ties by key).
fn expected(docs: u64) -> (u64, Vec<String>) {
    let mut oslo: Vec<(u64, String)> = (0..docs)
        .filter(|i| city(*i) == OSLO && age_of(*i) >= 18)
        .map(|i| (age_of(i), format!("/users/{i:07}")))
        .collect();
    let count = oslo.iter().filter(|(a, _)| *a > 30).count() as u64;
    oslo.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    (count, oslo.into_iter().take(10).map(|(_, k)| k).collect())
}

const COUNT_QUERY: &str = "SELECT COUNT(*) FROM '/users/' WHERE city = 'Oslo' AND age > 30";
/// The oldest adults in Oslo. (`city = 'Oslo'` alone could not use the
/// `(city, age)` index: it holds only documents with a numeric age, and
/// would miss the others.)
const TOP_QUERY: &str =
    "SELECT KEY FROM '/users/' WHERE city = 'Oslo' AND age >= 18 ORDER BY age DESC LIMIT 10";

/// How a query is answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    NodIndex,
    NodScan,
    EtcdClient,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::NodIndex => "Nod, through the (city, age) index",
            Way::NodScan => "Nod, prefix scan (plan forced)",
            Way::EtcdClient => "etcd, Range in pages + client-side filter",
        }
    }
}

/// A query's answer, as both systems can give it.
#[derive(Debug, PartialEq)]
enum Answer {
    Count(u64),
    Keys(Vec<String>),
}

async fn nod_query(conn: &Conn, text: &str, plan: Plan) -> Result<(Answer, u64), String> {
    let r = QueryClient::new(conn.clone())
        .max_decoding_message_size(64 << 20)
        .query(QueryRequest {
            text: text.to_string(),
            plan: plan as i32,
            index: String::new(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("Nod query: {}", e.message()))?
        .into_inner();
    if plan == Plan::Best && !r.plan.contains("read index users_city_age") {
        return Err(format!("the planner did not take the index:\n{}", r.plan));
    }
    let examined = r.stats.as_ref().map_or(0, |s| s.docs + s.entries);
    if r.counted {
        return Ok((Answer::Count(r.count), examined));
    }
    let keys = r
        .rows
        .iter()
        .map(|row| {
            row.cells
                .first()
                .and_then(|c| serde_json::from_str::<String>(c).ok())
                .unwrap_or_default()
        })
        .collect();
    Ok((Answer::Keys(keys), examined))
}

/// The client-side equivalent on etcd: every document under `/users/`,
/// parsed and filtered (and sorted for the top ten).
async fn etcd_query(conn: &Conn, top: bool) -> Result<(Answer, u64), String> {
    let mut kv = KvClient::new(conn.clone()).max_decoding_message_size(256 << 20);
    let (mut count, mut seen, mut oslo) = (0u64, 0u64, Vec::new());
    workload::list_pages(
        &mut kv,
        b"/users/".to_vec(),
        b"/users0".to_vec(),
        PAGE,
        |page| {
            for kv in &page.kvs {
                seen += 1;
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&kv.value) else {
                    continue;
                };
                if v["city"] != OSLO {
                    continue;
                }
                let age = v["age"].as_f64().unwrap_or(-1.0);
                if top && age >= 18.0 {
                    oslo.push((age, String::from_utf8_lossy(&kv.key).into_owned()));
                } else if !top && age > 30.0 {
                    count += 1;
                }
            }
        },
    )
    .await
    .map_err(|e| format!("etcd range: {}", e.message()))?;
    if !top {
        return Ok((Answer::Count(count), seen));
    }
    oslo.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok((
        Answer::Keys(oslo.into_iter().take(10).map(|(_, k)| k).collect()),
        seen,
    ))
}

struct Timed {
    hist: Histogram<u64>,
    rows: u64,
    examined: u64,
    seconds: f64,
    refused: Option<String>,
}

impl Timed {
    fn new() -> Timed {
        Timed {
            hist: workload::histogram(),
            rows: 0,
            examined: 0,
            seconds: 0.0,
            refused: None,
        }
    }
}

/// Puts documents `0..count` under `/users/`, 64 in flight.
async fn load(conns: &[Conn], count: u64) -> Result<(), String> {
    workload::put_all(conns, count, 64, |i| {
        (format!("/users/{i:07}").into_bytes(), doc(i))
    })
    .await
}

fn index_spec(name: &str, prefix: &str, fields: &[(&str, FieldType)]) -> IndexSpec {
    IndexSpec {
        name: name.to_string(),
        prefix: prefix.as_bytes().to_vec(),
        fields: fields
            .iter()
            .map(|(path, t)| IndexField {
                path: path.to_string(),
                r#type: *t as i32,
            })
            .collect(),
        unique: false,
    }
}

/// Declares an index and waits until it is ready; how long that took.
async fn build_index(conn: &Conn, spec: IndexSpec) -> Result<Duration, String> {
    let name = spec.name.clone();
    let mut ix = IndexClient::new(conn.clone());
    // A new cluster enables indexes once every member has published
    // them, a moment after it starts: until then a declaration is
    // refused, and sent again.
    let asked = Instant::now();
    loop {
        match ix
            .create(IndexCreateRequest {
                spec: Some(spec.clone()),
            })
            .await
        {
            Ok(_) => break,
            Err(e)
                if e.code() == tonic::Code::FailedPrecondition
                    && e.message().contains("has not enabled")
                    && asked.elapsed() < Duration::from_secs(60) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("index create {name}: {}", e.message())),
        }
    }
    let started = Instant::now();
    loop {
        let d = ix
            .describe(IndexDescribeRequest {
                name: name.clone(),
                serializable: false,
                verify: false,
            })
            .await
            .map_err(|e| format!("index describe {name}: {}", e.message()))?
            .into_inner();
        match d.index.and_then(|i| i.state) {
            Some(index_def::State::Ready(_)) => return Ok(started.elapsed()),
            Some(index_def::State::Failed(f)) => return Err(format!("index {name} failed: {f:?}")),
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(1800) {
            return Err(format!("index {name} not ready after 30 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Puts for `seconds` from `clients` clients over `keys` keys under
/// `prefix`; the measured puts per second and latency.
async fn write_load(
    conns: &[Conn],
    prefix: &'static str,
    keys: u64,
    clients: usize,
    seconds: u64,
) -> workload::Measured {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let mut kv = KvClient::new(conns[c % conns.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut m = workload::Measured::empty();
            let mut rng = workload::Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
            while Instant::now() < deadline {
                let i = rng.next() % keys.max(1);
                let t = Instant::now();
                let r = kv
                    .put(PutRequest {
                        key: format!("{prefix}{i:07}").into_bytes(),
                        value: doc(i.wrapping_add(m.ops)),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => {
                        m.ops += 1;
                        let _ = m.hist.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => m.errors += 1,
                }
            }
            m
        }));
    }
    let started = Instant::now();
    let mut m = workload::Measured::empty();
    for t in tasks {
        if let Ok(one) = t.await {
            m.merge(&one);
        }
    }
    m.elapsed = started.elapsed().max(Duration::from_secs(seconds));
    m
}

pub async fn run(
    nod_bin: &Path,
    etcd: (&str, &Path),
    root: &Path,
    a: Args,
) -> Result<String, String> {
    let dir = tempfile::tempdir_in(root).map_err(|e| e.to_string())?;
    let (etcd_name, etcd_bin) = etcd;
    for d in ["nod", "etcd"] {
        std::fs::create_dir_all(dir.path().join(d)).map_err(|e| e.to_string())?;
    }
    let mut nod = Cluster::start(System::Nod, nod_bin, &dir.path().join("nod"), None)?;
    let mut etc = Cluster::start(System::Etcd, etcd_bin, &dir.path().join("etcd"), None)?;
    nod.wait_ready(Duration::from_secs(60)).await?;
    etc.wait_ready(Duration::from_secs(60)).await?;
    let access = Access::default();
    let nod_conns = workload::connect(&nod.endpoints(), 8, &access).await?;
    let etcd_conns = workload::connect(&etc.endpoints(), 8, &access).await?;

    let started = Instant::now();
    load(&nod_conns, a.docs).await?;
    load(&etcd_conns, a.docs).await?;
    let loaded = started.elapsed();
    let built = build_index(
        &nod_conns[0],
        index_spec("users_city_age", "/users/", CITY_AGE),
    )
    .await?;

    let (want_count, want_top) = expected(a.docs);
    let queries = [(COUNT_QUERY, false), (TOP_QUERY, true)];
    let ways = [Way::NodIndex, Way::NodScan, Way::EtcdClient];
    let mut timed: Vec<Vec<Timed>> = queries
        .iter()
        .map(|_| ways.iter().map(|_| Timed::new()).collect())
        .collect();
    for _ in 0..a.rounds {
        for (q, (text, top)) in queries.iter().enumerate() {
            for (w, way) in ways.iter().enumerate() {
                let t = &mut timed[q][w];
                if t.refused.is_some() {
                    continue;
                }
                for r in 0..a.repeat {
                    let conn = match way {
                        Way::EtcdClient => &etcd_conns[r % etcd_conns.len()],
                        _ => &nod_conns[r % nod_conns.len()],
                    };
                    let s = Instant::now();
                    let answer = match way {
                        Way::NodIndex => nod_query(conn, text, Plan::Best).await,
                        Way::NodScan => nod_query(conn, text, Plan::PrefixScan).await,
                        Way::EtcdClient => etcd_query(conn, *top).await,
                    };
                    let took = s.elapsed();
                    let (answer, examined) = match answer {
                        Ok(x) => x,
                        // The prefix scan of a large prefix is over the
                        // query limits: a result in itself.
                        Err(e) if *way == Way::NodScan && e.contains("limit") => {
                            t.refused = Some(e);
                            break;
                        }
                        Err(e) => return Err(e),
                    };
                    let want = if *top {
                        Answer::Keys(want_top.clone())
                    } else {
                        Answer::Count(want_count)
                    };
                    if answer != want {
                        return Err(format!(
                            "{} answered {answer:?} to {text:?}, expected {want:?}",
                            way.label()
                        ));
                    }
                    t.rows += match &answer {
                        Answer::Count(n) => *n,
                        Answer::Keys(k) => k.len() as u64,
                    };
                    t.examined += examined;
                    t.seconds += took.as_secs_f64();
                    let _ = t.hist.record(took.as_micros().max(1) as u64);
                }
            }
        }
    }

    // Write cost, on keyspaces written once before.
    for (prefix, _) in WRITE_SETS {
        workload::put_all(&nod_conns, a.write_keys, 64, move |i| {
            (format!("{prefix}{i:07}").into_bytes(), doc(i))
        })
        .await?;
    }
    let first = build_index(
        &nod_conns[0],
        index_spec("w1_city", "/w1/", &[("city", FieldType::String)]),
    )
    .await?;
    build_index(
        &nod_conns[0],
        index_spec("w3_city", "/w3/", &[("city", FieldType::String)]),
    )
    .await?;
    build_index(&nod_conns[0], index_spec("w3_city_age", "/w3/", CITY_AGE)).await?;
    build_index(
        &nod_conns[0],
        index_spec("w3_email", "/w3/", &[("email", FieldType::String)]),
    )
    .await?;
    let mut rounds: Vec<Vec<workload::Measured>> = WRITE_SETS.iter().map(|_| Vec::new()).collect();
    for round in 0..a.write_rounds.max(1) {
        let mut order: Vec<usize> = (0..WRITE_SETS.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let m = write_load(
                &nod_conns,
                WRITE_SETS[k].0,
                a.write_keys,
                a.clients,
                a.seconds,
            )
            .await;
            rounds[k].push(m);
        }
    }
    let writes: Vec<(&str, Vec<workload::Measured>)> = WRITE_SETS
        .iter()
        .map(|(_, label)| *label)
        .zip(rounds)
        .collect();
    nod.stop();
    etc.stop();

    let mut md = String::new();
    md.push_str(&format!(
        "### Indexes and queries\n\n{} documents under `/users/` in each system (loaded in {:.1} s, both), \
         the `(city, age)` index built over them in {:.2} s. Each query {} times \
         ({} rounds, round robin), every answer checked. Nod against {etcd_name}.\n\n",
        a.docs,
        loaded.as_secs_f64(),
        built.as_secs_f64(),
        a.rounds * a.repeat,
        a.rounds,
    ));
    md.push_str(
        "| query | how | p50 ms | p99 ms | rows/s | read per query |\n|---|---|---|---|---|---|\n",
    );
    for (q, (text, _)) in queries.iter().enumerate() {
        for (w, way) in ways.iter().enumerate() {
            let t = &timed[q][w];
            let n = t.hist.len().max(1);
            match &t.refused {
                Some(e) => md.push_str(&format!(
                    "| `{text}` | {} | refused: {e} | | | |\n",
                    way.label()
                )),
                None => md.push_str(&format!(
                    "| `{text}` | {} | {:.2} | {:.2} | {:.0} | {} |\n",
                    way.label(),
                    t.hist.value_at_quantile(0.5) as f64 / 1000.0,
                    t.hist.value_at_quantile(0.99) as f64 / 1000.0,
                    t.rows as f64 / t.seconds.max(1e-9),
                    t.examined / n,
                )),
            }
        }
    }
    // Each set's median round, and its latencies over every round.
    let median = |ms: &[workload::Measured]| {
        let mut t: Vec<f64> = ms.iter().map(|m| m.throughput()).collect();
        t.sort_by(f64::total_cmp);
        t.get(t.len() / 2).copied().unwrap_or(0.0)
    };
    let base = median(&writes[0].1);
    md.push_str(&format!(
        "\nWrite cost: puts of documents over {} keys already written under each of three prefixes (0, 1 and 3 indexes), {} clients, {} rounds of {} s taking the prefixes in turn (the order reversed every other round); puts/s is the median round (slowest and fastest in brackets), latencies over every round. The one index was built over its documents in {:.2} s.\n\n| indexes on the prefix | puts/s | × no index | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|\n",
        a.write_keys,
        a.clients,
        a.write_rounds.max(1),
        a.seconds,
        first.as_secs_f64()
    ));
    for (label, ms) in &writes {
        let mut all = workload::Measured::empty();
        for m in ms {
            all.merge(m);
        }
        let (lo, hi) = ms
            .iter()
            .map(|m| m.throughput())
            .fold((f64::MAX, 0.0f64), |(lo, hi), t| (lo.min(t), hi.max(t)));
        md.push_str(&format!(
            "| {label} | {:.0} ({lo:.0}–{hi:.0}) | {:.2} | {:.2} | {:.2} | {} |\n",
            median(ms),
            median(ms) / base.max(1e-9),
            all.ms(0.5),
            all.ms(0.99),
            all.errors
        ));
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_expectations_agree() {
        let d: serde_json::Value = serde_json::from_slice(&doc(50)).unwrap();
        assert_eq!(d["city"], OSLO);
        assert_eq!(d["age"], age_of(50));
        let (count, top) = expected(5000);
        // 100 Oslo documents with ages spread over 0..100.
        let oslo: Vec<u64> = (0..5000).filter(|i| i % 50 == 0).collect();
        assert_eq!(oslo.len(), 100);
        assert_eq!(
            count,
            oslo.iter().filter(|i| age_of(**i) > 30).count() as u64
        );
        assert!(count > 50 && count < 90, "{count}");
        assert_eq!(top.len(), 10);
        let ages: Vec<u64> = top
            .iter()
            .map(|k| age_of(k["/users/".len()..].parse().unwrap()))
            .collect();
        assert!(ages.windows(2).all(|w| w[0] >= w[1]), "{ages:?}");
    }
}
