//! etcd's gRPC-JSON gateway, through real curl, against etcd 3.4 and Nod
//! in the same test: the same requests in the same order go to both, and
//! the answers (status, the headers a client reads, the body) must be the
//! same, once what differs by nature between two servers is masked (ids,
//! terms, sizes, hashes, tokens, versions, URLs). Revisions are compared:
//! both stores start empty and see the same writes.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{Cluster, Etcd};

/// What a gateway answered, as compared between the two servers.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Answer {
    status: u16,
    /// The headers clients and browsers read (not framing: etcd answers
    /// errors chunked, Nod with a length).
    headers: Vec<String>,
    body: String,
}

const COMPARED_HEADERS: &[&str] = &[
    "content-type",
    "grpc-metadata-content-type",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "allow",
    "x-content-type-options",
];

/// One HTTP exchange through curl. `max_time` ends a stream that stays
/// open (a watch), keeping what arrived before.
fn curl(
    endpoint: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    extra: &[&str],
    max_time: u32,
) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-i",
        "-X",
        method,
        "--max-time",
        &max_time.to_string(),
    ])
    .args(extra)
    .arg(format!("http://{endpoint}{path}"));
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl runs (./scripts/setup installs it)");
    {
        let mut stdin = child.stdin.take().unwrap();
        if let Some(b) = body {
            stdin.write_all(b).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    // 28: the stream was cut at max_time, as meant.
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(28),
        "curl {method} {path} failed: {:?}",
        out.status
    );
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn parse(raw: &str) -> Answer {
    let mut rest = raw;
    loop {
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // curl shows interim answers (100 Continue) before the real one.
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let mut headers: Vec<String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .filter(|(k, _)| COMPARED_HEADERS.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        headers.sort();
        // etcd sends an error chunked, with a trailer curl prints after
        // the body; Nod sends it with a length (a documented difference).
        let body = body
            .strip_suffix("Grpc-Trailer-Content-Type: application/grpc\r\n")
            .unwrap_or(body);
        return Answer {
            status,
            headers,
            body: body.to_string(),
        };
    }
}

/// Replaces the JSON scalar after each `"key":` in `text` by `"*"`.
fn mask(text: &str, keys: &[&str]) -> String {
    let mut out = text.to_string();
    for key in keys {
        let pat = format!("\"{key}\":");
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&pat) {
            let (before, after) = rest.split_at(i + pat.len());
            result.push_str(before);
            let end = if let Some(s) = after.strip_prefix('"') {
                // The closing quote: the first one not escaped.
                let mut escaped = false;
                s.char_indices()
                    .find(|&(_, c)| {
                        let close = c == '"' && !escaped;
                        escaped = c == '\\' && !escaped;
                        close
                    })
                    .map(|(j, _)| j + 2)
                    .unwrap_or(after.len())
            } else {
                after.find([',', '}', ']']).unwrap_or(after.len())
            };
            result.push_str("\"*\"");
            rest = &after[end..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// The string value of `"name":"..."` in a JSON text.
fn field(json: &str, name: &str) -> String {
    json.split(&format!("\"{name}\":\""))
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        .to_string()
}

/// What differs between any two servers, never between two answers.
const ALWAYS_MASKED: &[&str] = &["cluster_id", "member_id", "raft_term"];

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

struct Run<'a> {
    ep: &'a str,
    t: Vec<(String, Answer)>,
}

impl Run<'_> {
    fn push(&mut self, label: &str, a: Answer) {
        self.t.push((label.to_string(), a));
    }

    fn post(&mut self, label: &str, path: &str, body: &str, masked: &[&str]) -> Answer {
        let mut a = curl(self.ep, "POST", path, Some(body.as_bytes()), &[], 5);
        let keys: Vec<&str> = ALWAYS_MASKED.iter().chain(masked).copied().collect();
        a.body = mask(&a.body, &keys);
        self.push(label, a.clone());
        a
    }

    /// A watch: what arrives in 2 s (the stream stays open). The lines
    /// are compared per watcher, in order (a stable sort by watch id): how
    /// two watchers' lines interleave is the server's choice. etcd 3.4
    /// answers a progress request before the history it still replays
    /// (the bug 3.5.13 fixed); Nod answers it after.
    fn watch(&mut self, label: &str, body: String) {
        let mut a = curl(self.ep, "POST", "/v3/watch", Some(body.as_bytes()), &[], 2);
        let mut lines: Vec<String> = mask(&a.body, ALWAYS_MASKED)
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort_by_key(|l| {
            l.split("\"watch_id\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .and_then(|id| id.parse::<i64>().ok())
                .unwrap_or(0)
        });
        a.body = lines.join("\n");
        self.push(label, a);
    }

    /// A call with one extra header.
    fn with(&mut self, label: &str, path: &str, body: &str, header: Option<String>) {
        let extra: Vec<String> = header
            .map(|h| vec!["-H".to_string(), h])
            .unwrap_or_default();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut a = curl(self.ep, "POST", path, Some(body.as_bytes()), &extra, 5);
        a.body = mask(&a.body, ALWAYS_MASKED);
        self.push(label, a);
    }
}

/// The scenario: every call a gateway user makes, good and bad. Returns
/// the labelled answers, masked.
fn transcript(ep: &str) -> Vec<(String, Answer)> {
    let mut r = Run { ep, t: Vec::new() };
    let (k_foo, v_bar, k_fop) = (b64("foo"), b64("bar"), b64("fop"));

    // KV.
    r.post(
        "put",
        "/v3/kv/put",
        &format!(r#"{{"key":"{k_foo}","value":"{v_bar}"}}"#),
        &[],
    );
    r.post(
        "put prev_kv (beta prefix)",
        "/v3beta/kv/put",
        &format!(
            r#"{{"key":"{k_foo}","value":"{}","prev_kv":true}}"#,
            b64("baz")
        ),
        &[],
    );
    for k in ["foo1", "foo2", "foo3"] {
        r.post(
            "put",
            "/v3/kv/put",
            &format!(r#"{{"key":"{}","value":""}}"#, b64(k)),
            &[],
        );
    }
    r.post(
        "range one",
        "/v3/kv/range",
        &format!(r#"{{"key":"{k_foo}"}}"#),
        &[],
    );
    r.post(
        "range prefix, limit (more, count)",
        "/v3/kv/range",
        &format!(r#"{{"key":"{k_foo}","range_end":"{k_fop}","limit":2}}"#),
        &[],
    );
    r.post(
        "range camelCase names, integers as strings, descend",
        "/v3/kv/range",
        &format!(
            r#"{{"key":"{k_foo}","rangeEnd":"{k_fop}","keysOnly":true,"limit":"2","sort_order":"DESCEND","sort_target":"KEY"}}"#
        ),
        &[],
    );
    r.post(
        "range count_only",
        "/v3/kv/range",
        &format!(r#"{{"key":"{k_foo}","range_end":"{k_fop}","count_only":true}}"#),
        &[],
    );
    r.post(
        "range at revision 2",
        "/v3/kv/range",
        &format!(r#"{{"key":"{k_foo}","revision":"2"}}"#),
        &[],
    );
    r.post(
        "range of nothing",
        "/v3/kv/range",
        r#"{"key":"bm9uZQ=="}"#,
        &[],
    );
    r.post("range without key", "/v3/kv/range", "{}", &[]);
    r.post("range with an empty body", "/v3/kv/range", "", &[]);
    r.post(
        "range with unknown fields",
        "/v3/kv/range",
        &format!(r#"{{"key":"{k_foo}","bogus":1}}"#),
        &[],
    );
    r.post(
        "deleterange prev_kv",
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{}","prev_kv":true}}"#, b64("foo3")),
        &[],
    );
    r.post(
        "deleterange of nothing",
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{}"}}"#, b64("foo3")),
        &[],
    );

    // Txn: a compare that holds, one that fails, a duplicate key.
    r.post(
        "txn succeeded",
        "/v3/kv/txn",
        &format!(
            r#"{{"compare":[{{"key":"{k_foo}","target":"MOD","result":"EQUAL","mod_revision":"2"}}],
                "success":[{{"request_put":{{"key":"{}","value":"{v_bar}"}}}},{{"request_range":{{"key":"{k_foo}"}}}},
                           {{"request_delete_range":{{"key":"{}"}}}}],
                "failure":[{{"request_range":{{"key":"{k_foo}"}}}}]}}"#,
            b64("t1"),
            b64("foo2")
        ),
        &[],
    );
    r.post(
        "txn failed",
        "/v3/kv/txn",
        &format!(
            r#"{{"compare":[{{"key":"{k_foo}","target":"VALUE","result":"EQUAL","value":"{}"}}],
                "success":[{{"request_put":{{"key":"{k_foo}","value":"{v_bar}"}}}}],
                "failure":[{{"requestRange":{{"key":"{k_foo}"}}}}]}}"#,
            b64("nope")
        ),
        &[],
    );
    r.post(
        "txn duplicate key",
        "/v3/kv/txn",
        &format!(
            r#"{{"success":[{{"request_put":{{"key":"{k_foo}"}}}},{{"request_put":{{"key":"{k_foo}"}}}}]}}"#
        ),
        &[],
    );
    r.post("txn empty", "/v3/kv/txn", "{}", &[]);

    // Compaction and its errors.
    r.post("compact", "/v3/kv/compaction", r#"{"revision":"3"}"#, &[]);
    r.post(
        "compact again",
        "/v3/kv/compaction",
        r#"{"revision":3}"#,
        &[],
    );
    r.post(
        "compact the future",
        "/v3/kv/compaction",
        r#"{"revision":"1000"}"#,
        &[],
    );
    r.post(
        "range compacted",
        "/v3/kv/range",
        &format!(r#"{{"key":"{k_foo}","revision":2}}"#),
        &[],
    );
    r.post(
        "range future",
        "/v3/kv/range",
        &format!(r#"{{"key":"{k_foo}","revision":1000}}"#),
        &[],
    );

    // Leases (chosen IDs, so both servers agree on them).
    r.post(
        "lease grant",
        "/v3/lease/grant",
        r#"{"TTL":60,"ID":1000}"#,
        &[],
    );
    r.post(
        "lease grant duplicate",
        "/v3/lease/grant",
        r#"{"TTL":"60","ID":"1000"}"#,
        &[],
    );
    r.post(
        "put with lease",
        "/v3/kv/put",
        &format!(
            r#"{{"key":"{}","value":"{v_bar}","lease":"1000"}}"#,
            b64("leased")
        ),
        &[],
    );
    r.post(
        "put with a missing lease",
        "/v3/kv/put",
        &format!(r#"{{"key":"{k_foo}","lease":"77"}}"#),
        &[],
    );
    r.post(
        "lease timetolive keys",
        "/v3/lease/timetolive",
        r#"{"ID":"1000","keys":true}"#,
        &["TTL"],
    );
    r.post(
        "lease timetolive (kv alias)",
        "/v3/kv/lease/timetolive",
        r#"{"ID":1000}"#,
        &["TTL"],
    );
    r.post(
        "lease timetolive missing",
        "/v3/lease/timetolive",
        r#"{"ID":"999"}"#,
        &[],
    );
    r.post("lease leases", "/v3/lease/leases", "{}", &[]);
    r.post(
        "lease keepalive: one answer per request, then the end",
        "/v3/lease/keepalive",
        r#"{"ID":"1000"} {"ID":1000}{"ID":"5"}"#,
        &[],
    );
    r.post(
        "lease keepalive, bad first message",
        "/v3/lease/keepalive",
        r#"{"ID":"#,
        &["error", "message"],
    );
    r.post("lease revoke", "/v3/lease/revoke", r#"{"ID":"1000"}"#, &[]);
    r.post(
        "lease revoke missing (kv alias)",
        "/v3/kv/lease/revoke",
        r#"{"ID":"1000"}"#,
        &[],
    );
    r.post(
        "range after revoke",
        "/v3/kv/range",
        &format!(r#"{{"key":"{}"}}"#, b64("leased")),
        &[],
    );

    // Watch: the history from a compacted revision (canceled), then a
    // watcher with history, prev_kv and a second watcher on the stream.
    r.watch(
        "watch from a compacted revision",
        format!(r#"{{"create_request":{{"key":"{k_foo}","start_revision":"2"}}}}"#),
    );
    r.watch(
        "watch history, prev_kv, two watchers, a progress request",
        format!(
            r#"{{"create_request":{{"key":"{k_foo}","range_end":"{k_fop}","start_revision":"4","prev_kv":true}}}}
               {{"create_request":{{"key":"{}","start_revision":"3","filters":["NOPUT"]}}}}
               {{"progress_request":{{}}}}"#,
            b64("foo3")
        ),
    );

    // Maintenance and cluster.
    r.post(
        "status",
        "/v3/maintenance/status",
        "{}",
        &[
            "version",
            "dbSize",
            "dbSizeInUse",
            "leader",
            "raftIndex",
            "raftTerm",
            "raftAppliedIndex",
        ],
    );
    r.post(
        "alarm list, none",
        "/v3/maintenance/alarm",
        r#"{"action":"GET"}"#,
        &[],
    );
    r.post(
        "alarm activate",
        "/v3/maintenance/alarm",
        r#"{"action":"ACTIVATE","memberID":"7","alarm":"NOSPACE"}"#,
        &[],
    );
    r.post(
        "put under NOSPACE",
        "/v3/kv/put",
        &format!(r#"{{"key":"{k_foo}","value":"{v_bar}"}}"#),
        &[],
    );
    r.post(
        "range under NOSPACE",
        "/v3/kv/range",
        &format!(r#"{{"key":"{k_foo}"}}"#),
        &[],
    );
    let health = curl(ep, "GET", "/health", None, &[], 5);
    r.push("health under an alarm", health);
    r.post(
        "alarm deactivate",
        "/v3/maintenance/alarm",
        r#"{"action":"DEACTIVATE","memberID":"7","alarm":"NOSPACE"}"#,
        &[],
    );
    r.post(
        "alarm list after",
        "/v3/maintenance/alarm",
        r#"{"action":"GET"}"#,
        &[],
    );
    r.post("defragment", "/v3/maintenance/defragment", "{}", &[]);
    r.post("hash", "/v3/maintenance/hash", "{}", &["hash"]);
    r.post(
        "member list",
        "/v3/cluster/member/list",
        "{}",
        &["ID", "name", "peerURLs", "clientURLs"],
    );

    // Bad input: every one a 4xx with etcd's body (the decoder's own
    // wording differs between Go and Rust, so it is masked).
    let decode = &["error", "message"];
    r.post("malformed JSON", "/v3/kv/put", r#"{"key":"#, decode);
    r.post("bad base64", "/v3/kv/put", r#"{"key":"!!!"}"#, decode);
    r.post(
        "a string for a bool",
        "/v3/kv/range",
        &format!(r#"{{"key":"{k_foo}","keys_only":"true"}}"#),
        decode,
    );
    r.post(
        "a word for a number",
        "/v3/kv/range",
        &format!(r#"{{"key":"{k_foo}","limit":"abc"}}"#),
        decode,
    );
    r.post(
        "a lower-case enum",
        "/v3/kv/range",
        &format!(r#"{{"key":"{k_foo}","sort_order":"descend"}}"#),
        decode,
    );
    r.post("an array", "/v3/kv/range", "[1]", decode);
    let big = "x".repeat(1100 * 1024);
    r.post(
        "too large a request",
        "/v3/kv/put",
        &format!(r#"{{"key":"{k_foo}","value":"{}"}}"#, b64(&big)),
        &[],
    );
    let huge = "x".repeat(2 * 1024 * 1024);
    r.post(
        "over gRPC's limit",
        "/v3/kv/put",
        &format!(r#"{{"key":"{k_foo}","value":"{}"}}"#, b64(&huge)),
        &[],
    );

    // Routing and the HTTP endpoints.
    for (label, method, path) in [
        ("unknown gateway path", "POST", "/v3/kv/nothing"),
        ("v3alpha is not served", "POST", "/v3alpha/kv/range"),
        ("GET on a gateway path", "GET", "/v3/kv/range"),
        ("OPTIONS", "OPTIONS", "/v3/kv/range"),
        ("health", "GET", "/health"),
        ("POST on /health", "POST", "/health"),
        ("unknown path", "GET", "/nothing"),
    ] {
        r.push(label, curl(ep, method, path, None, &[], 5));
    }
    let mut version = curl(ep, "GET", "/version", None, &[], 5);
    version.body = mask(&version.body, &["etcdserver", "etcdcluster"]);
    r.push("version", version);

    // Lock and Election through the gateway (unary calls and Observe's
    // stream), under a chosen lease so keys agree: `<name>/<lease hex>`.
    r.post(
        "lease for lock and election",
        "/v3/lease/grant",
        r#"{"TTL":60,"ID":2000}"#,
        &[],
    );
    let lock = r.post(
        "lock",
        "/v3/lock/lock",
        &format!(r#"{{"name":"{}","lease":"2000"}}"#, b64("lk")),
        &[],
    );
    let key = field(&lock.body, "key");
    r.post(
        "unlock",
        "/v3/lock/unlock",
        &format!(r#"{{"key":"{key}"}}"#),
        &[],
    );
    let el = b64("el");
    let campaign = r.post(
        "campaign",
        "/v3/election/campaign",
        &format!(
            r#"{{"name":"{el}","lease":"2000","value":"{}"}}"#,
            b64("alice")
        ),
        &[],
    );
    let (key, rev) = (field(&campaign.body, "key"), field(&campaign.body, "rev"));
    let leader = format!(r#"{{"name":"{el}","key":"{key}","rev":"{rev}","lease":"2000"}}"#);
    r.post(
        "proclaim",
        "/v3/election/proclaim",
        &format!(r#"{{"leader":{leader},"value":"{}"}}"#, b64("bob")),
        &[],
    );
    r.post(
        "leader",
        "/v3/election/leader",
        &format!(r#"{{"name":"{el}"}}"#),
        &[],
    );
    let mut observe = curl(
        ep,
        "POST",
        "/v3/election/observe",
        Some(format!(r#"{{"name":"{el}"}}"#).as_bytes()),
        &[],
        2,
    );
    observe.body = mask(&observe.body, ALWAYS_MASKED);
    r.push("observe (a stream)", observe);
    r.post(
        "resign",
        "/v3/election/resign",
        &format!(r#"{{"leader":{leader}}}"#),
        &[],
    );
    r.post(
        "leader after resign",
        "/v3/election/leader",
        &format!(r#"{{"name":"{el}"}}"#),
        &[],
    );

    // Auth: tokens in Authorization, raw.
    r.post(
        "user add root",
        "/v3/auth/user/add",
        r#"{"name":"root","password":"pw"}"#,
        &[],
    );
    r.post("role add", "/v3/auth/role/add", r#"{"name":"root"}"#, &[]);
    r.post(
        "user grant root",
        "/v3/auth/user/grant",
        r#"{"user":"root","role":"root"}"#,
        &[],
    );
    r.post("auth enable", "/v3/auth/enable", "{}", &[]);
    let auth = r.post(
        "authenticate",
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
        &["token"],
    );
    assert_eq!(auth.status, 200, "authenticate: {auth:?}");
    let raw = curl(
        ep,
        "POST",
        "/v3/auth/authenticate",
        Some(br#"{"name":"root","password":"pw"}"#),
        &[],
        5,
    );
    let token = raw
        .body
        .split("\"token\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a token")
        .to_string();
    let put = format!(r#"{{"key":"{k_foo}","value":"{v_bar}"}}"#);
    r.with("put without a token", "/v3/kv/put", &put, None);
    r.with(
        "put with a bad token",
        "/v3/kv/put",
        &put,
        Some("Authorization: bogus.1".into()),
    );
    r.with(
        "put with the token",
        "/v3/kv/put",
        &put,
        Some(format!("Authorization: {token}")),
    );
    r.with(
        "user list with the token",
        "/v3/auth/user/list",
        "{}",
        Some(format!("Authorization: {token}")),
    );
    r.with(
        "auth disable",
        "/v3/auth/disable",
        "{}",
        Some(format!("Authorization: {token}")),
    );
    r.with("put after disable", "/v3/kv/put", &put, None);
    r.t
}

/// Waits until a member answers a read.
fn wait_serving(ep: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !support::etcdctl(ep, &["get", "ready"], None)
        .status
        .success()
    {
        assert!(std::time::Instant::now() < deadline, "{ep} does not serve");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn the_json_gateway_answers_as_etcds() {
    let flags = ["--max-request-bytes", "1048576"];
    let etcd = Etcd::start(&flags);
    etcd.wait_ready();
    let nod = Cluster::start_with(1, &flags);
    let ep = nod.members[0].endpoint();
    wait_serving(&ep);

    let want = transcript(&etcd.endpoint());
    let got = transcript(&ep);
    assert_eq!(want.len(), got.len());
    let mut differ = Vec::new();
    for ((label, w), (_, g)) in want.iter().zip(&got) {
        if w != g {
            differ.push(format!("{label}:\n  etcd: {w:?}\n  nod:  {g:?}"));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} answers differ from etcd 3.4's:\n{}",
        differ.len(),
        want.len(),
        differ.join("\n")
    );
    // The comparison saw real answers, not two empty transcripts.
    let statuses: std::collections::BTreeSet<u16> = got.iter().map(|(_, a)| a.status).collect();
    for s in [200, 400, 401, 404, 405, 412, 429, 503] {
        assert!(
            statuses.contains(&s),
            "no {s} among the answers: {statuses:?}"
        );
    }
}

/// What the client port counts: gateway calls as the gRPC calls they make
/// (one `Range` per `/v3/kv/range`), and neither HTTP paths nor invented
/// gRPC method names as labels (each would be a new metric series).
#[test]
fn metrics_count_gateway_calls_and_no_invented_names() {
    let nod = Cluster::start(1);
    let m = &nod.members[0];
    let ep = m.endpoint();
    wait_serving(&ep);
    let ranges = r#"grpc_server_handled_total{grpc_code="Ok",grpc_method="Range"}"#;
    let before = m.metric(ranges);
    for _ in 0..3 {
        let a = curl(
            &ep,
            "POST",
            "/v3/kv/range",
            Some(br#"{"key":"YQ=="}"#),
            &[],
            5,
        );
        assert_eq!(a.status, 200, "{a:?}");
    }
    for path in [
        "/v3/kv/nothing-here",
        "/random-path-1",
        "/v3/kv/random-path-2",
    ] {
        assert_eq!(curl(&ep, "POST", path, Some(b"{}"), &[], 5).status, 404);
    }
    for name in ["Invented1", "Invented2"] {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "--http2-prior-knowledge",
                "-X",
                "POST",
            ])
            .args(["-H", "content-type: application/grpc", "--data-binary", ""])
            .arg(format!("http://{ep}/etcdserverpb.KV/{name}"))
            .status()
            .unwrap();
        assert!(out.success());
    }
    assert_eq!(m.metric(ranges) - before, 3.0);

    // A snapshot through the gateway: `{"result":{..,"blob":..}}` lines
    // whose blobs join into the file etcdctl reads.
    let put = curl(
        &ep,
        "POST",
        "/v3/kv/put",
        Some(br#"{"key":"YQ==","value":"Yg=="}"#),
        &[],
        5,
    );
    let revision = field(&put.body, "revision");
    let snap = curl(
        &ep,
        "POST",
        "/v3/maintenance/snapshot",
        Some(b"{}"),
        &[],
        10,
    );
    assert_eq!(snap.status, 200);
    let mut file = Vec::new();
    for line in snap.body.lines() {
        use base64::Engine;
        let blob = field(line, "blob");
        file.extend(
            base64::engine::general_purpose::STANDARD
                .decode(blob)
                .unwrap(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.db");
    std::fs::write(&path, &file).unwrap();
    let status = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains(&format!("\"revision\":{revision},")),
        "etcdctl snapshot status: {text} {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (_, body) = m.http_get("/metrics").expect("metrics");
    // The client port serves the same metrics, as etcd's does.
    let client = curl(&ep, "GET", "/metrics", None, &[], 5);
    assert_eq!(client.status, 200);
    let line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with(ranges))
            .map(str::to_string)
    };
    assert_eq!(line(&client.body), line(&body), "{}", client.body);
    assert!(line(&body).is_some());
    for name in ["Invented", "random-path", "nothing-here"] {
        assert!(!body.contains(name), "{name} became a label");
    }
    assert!(
        body.contains(
            r#"grpc_server_handled_total{grpc_code="Unimplemented",grpc_method="unknown"} 2"#
        ),
        "{}",
        body.lines()
            .filter(|l| l.contains("Unimplemented"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
