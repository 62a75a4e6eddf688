//! The backup agent's HTTP interface: what `nod backup run --listen ADDR`
//! serves and the operator reads.
//!
//! - `GET /status`: an [`AgentStatus`] as JSON.
//! - `POST /backups`: start a new chain with a full snapshot now; answers
//!   `{"request": N}`, and `completedRequest` in the status reaches N once
//!   that full is written.
//!
//! Plain HTTP: the status carries no secret (times, revisions, sizes and
//! the last error), and the operator's NetworkPolicy lets only the operator
//! reach the port.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// The largest answer read from an agent.
pub const MAX_ANSWER: usize = 64 << 10;

/// What a backup agent has done and will do.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Where backups go (`s3://bucket/prefix` or a directory).
    pub destination: String,
    /// The cron schedule of full snapshots, or `every <duration>`.
    pub schedule: String,
    /// Whether changes between fulls are recorded (point-in-time restore).
    pub incremental: bool,
    /// The cluster backed up (hex), once a full was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// When the next full snapshot starts (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_full_unix_ms: Option<i64>,
    /// The newest full snapshot written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full: Option<FullBackup>,
    /// The chain being extended by segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// The newest revision a restore can reach from this agent's backups
    /// (the last segment's, or the full's), and when it was written.
    #[serde(default)]
    pub reached_revision: i64,
    #[serde(default)]
    pub reached_unix_ms: i64,
    /// The newest failure, kept after later successes (compare times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<AgentFailure>,
    /// Failed fulls and broken chains since the agent started.
    #[serde(default)]
    pub failures_total: u64,
    /// Full snapshots written since the agent started.
    #[serde(default)]
    pub fulls_total: u64,
    /// The newest `POST /backups` request whose full is written.
    #[serde(default)]
    pub completed_request: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FullBackup {
    /// The chain's folder (`<cluster>/chain-<revision>-<time>`).
    pub chain: String,
    pub revision: i64,
    /// The snapshot's size, and its size compressed in the destination.
    pub size_bytes: u64,
    pub stored_bytes: u64,
    pub time_unix_ms: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentFailure {
    pub time_unix_ms: i64,
    pub message: String,
}

/// The answer to `POST /backups`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requested {
    pub request: u64,
}

/// `GET {base}/status`, within `timeout`.
pub async fn status(base: &str, timeout: Duration) -> Result<AgentStatus, String> {
    call(http::Method::GET, base, "/status", timeout).await
}

/// `POST {base}/backups`, within `timeout`.
pub async fn request_backup(base: &str, timeout: Duration) -> Result<Requested, String> {
    call(http::Method::POST, base, "/backups", timeout).await
}

async fn call<T: serde::de::DeserializeOwned>(
    method: http::Method,
    base: &str,
    path: &str,
    timeout: Duration,
) -> Result<T, String> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("backup agent address {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "backup agent address {url:?}: only http:// is served"
        ));
    }
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("backup agent request: {e}"))?;
    let client = HttpClient::builder(TokioExecutor::new()).build_http();
    let answer = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("backup agent {url}: {e}"))?;
        let code = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("backup agent {url}: reading the answer: {e}"))?
            .to_bytes();
        if !code.is_success() {
            return Err(format!(
                "backup agent {url}: {code}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|e| format!("backup agent {url}: not an answer it gives: {e}"))
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| format!("backup agent {url}: no answer within {timeout:?}"))?
}

/// A schedule of full backups in Kubernetes CronJob's syntax: five fields
/// (minute hour day-of-month month day-of-week) or a nickname (`@hourly`,
/// `@daily`, `@weekly`, `@monthly`, `@yearly`), in UTC.
#[derive(Clone, Debug)]
pub struct Schedule {
    text: String,
    cron: croner::Cron,
}

/// The longest schedule accepted (as the CRD's length limit).
pub const MAX_SCHEDULE_LEN: usize = 128;

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        use croner::parser::{CronParser, Seconds, Year};
        let text = text.trim();
        if text.len() > MAX_SCHEDULE_LEN {
            return Err(format!(
                "a schedule has at most {MAX_SCHEDULE_LEN} characters"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| {
                format!("schedule {text:?} is not a cron schedule such as \"0 */6 * * *\": {e}")
            })?;
        // A pattern that never matches (31 February) would never back up.
        let probe = Schedule {
            text: text.to_string(),
            cron,
        };
        match probe.next_after(0) {
            Some(_) => Ok(probe),
            None => Err(format!("schedule {text:?} never comes")),
        }
    }

    /// The first time after `unix_ms` (strictly) the schedule names, in
    /// Unix ms; `None` when it never comes again.
    pub fn next_after(&self, unix_ms: i64) -> Option<i64> {
        let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(unix_ms)?;
        self.cron
            .find_next_occurrence(&t, false)
            .ok()
            .map(|n| n.timestamp_millis())
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    /// 2026-01-01T00:00:00Z, a Thursday.
    const NEW_YEAR: i64 = 1_767_225_600_000;

    #[test]
    fn schedules_follow_cronjob_syntax_in_utc() {
        let every6h = Schedule::parse("0 */6 * * *").unwrap();
        assert_eq!(every6h.next_after(NEW_YEAR), Some(NEW_YEAR + 360 * MIN));
        assert_eq!(every6h.next_after(NEW_YEAR - 1), Some(NEW_YEAR));
        let minutely = Schedule::parse("*/1 * * * *").unwrap();
        assert_eq!(minutely.next_after(NEW_YEAR + 30_000), Some(NEW_YEAR + MIN));
        let daily = Schedule::parse("@daily").unwrap();
        assert_eq!(daily.next_after(NEW_YEAR), Some(NEW_YEAR + 1440 * MIN));
        // Friday 00:00 is the day after New Year's Day 2026.
        let fridays = Schedule::parse("0 0 * * FRI").unwrap();
        assert_eq!(fridays.next_after(NEW_YEAR), Some(NEW_YEAR + 1440 * MIN));
        assert_eq!(fridays.as_str(), "0 0 * * FRI");
    }

    #[test]
    fn bad_schedules_are_refused_with_the_reason() {
        for bad in [
            "",
            "* * * *",
            "0 0 * * * *",
            "61 * * * *",
            "every day",
            "0 0 31 2 *",
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.contains("schedule"), "{bad:?}: {e}");
        }
        assert!(Schedule::parse(&"*".repeat(200))
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn status_reads_what_it_writes_and_tolerates_missing_fields() {
        let s = AgentStatus {
            destination: "s3://b/p".into(),
            schedule: "@hourly".into(),
            incremental: true,
            cluster_id: Some("c1".into()),
            last_full: Some(FullBackup {
                chain: "c1/chain-1".into(),
                revision: 7,
                size_bytes: 9,
                stored_bytes: 3,
                time_unix_ms: 5,
            }),
            reached_revision: 12,
            ..Default::default()
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"lastFull\":{\"chain\""), "{json}");
        assert_eq!(serde_json::from_str::<AgentStatus>(&json).unwrap(), s);
        let old: AgentStatus =
            serde_json::from_str(r#"{"destination":"d","schedule":"x","incremental":false}"#)
                .unwrap();
        assert_eq!(old.reached_revision, 0);
    }
}
