//! What every client command shares: the flags (endpoints, output format,
//! timeout, TLS, user), connecting, printing, and how a failure becomes an
//! exit code.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Args, ValueEnum};
use nod_client::auth::Credentials;
use nod_client::tls::TlsOptions;
use nod_client::{CallOptions, Client, ClientError};
use nod_proto::etcd::etcdserverpb::ResponseHeader;
use nod_proto::etcd::mvccpb::KeyValue;
use serde_json::{json, Value};

#[derive(Args, Clone)]
pub struct ClientFlags {
    /// Comma-separated client endpoints (host:port or URLs).
    #[arg(
        long,
        env = "NOD_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(long, visible_alias = "write-out", short = 'w', env = "NOD_OUTPUT", value_enum, default_value_t = Output::Simple, global = true)]
    pub output: Output,
    /// Give up on a request after this many seconds.
    #[arg(long, env = "NOD_COMMAND_TIMEOUT", default_value_t = 10, global = true)]
    pub command_timeout: u64,
    /// CA bundle (PEM) that the members' certificates must chain to
    /// (default: the system's roots). Bare host:port endpoints then mean https://.
    #[arg(long, env = "NOD_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for members that require one.
    #[arg(long = "cert", id = "tls_cert", env = "NOD_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    // Its own id: `key` is also the name of commands' key argument.
    #[arg(long = "key", id = "tls_key", env = "NOD_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Accept any server certificate: encrypted but not authenticated.
    #[arg(long, env = "NOD_INSECURE_SKIP_TLS_VERIFY", global = true)]
    pub insecure_skip_tls_verify: bool,
    /// Log in as this user (etcd's authentication): NAME:PASSWORD, or NAME
    /// with the password from --password, else from the first line of
    /// standard input (not read from a terminal).
    #[arg(long, value_name = "NAME[:PASSWORD]", env = "NOD_USER", global = true)]
    pub user: Option<String>,
    /// The password of --user (then --user is the whole name, colons included).
    #[arg(long, env = "NOD_PASSWORD", hide_env_values = true, global = true)]
    pub password: Option<String>,
}

impl ClientFlags {
    /// The TLS options the flags give.
    pub fn tls(&self) -> TlsOptions {
        TlsOptions {
            ca_file: self.cacert.clone(),
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            insecure_skip_verify: self.insecure_skip_tls_verify,
        }
    }

    /// The user to log in as, as etcdctl reads `--user` and `--password`.
    /// A password from standard input is read once per process.
    pub fn credentials(&self) -> Result<Option<Credentials>, Failure> {
        let Some(user) = &self.user else {
            return match self.password {
                Some(_) => Err(usage("--password needs --user")),
                None => Ok(None),
            };
        };
        let credentials = match &self.password {
            Some(password) => Credentials::new(user, password),
            None => match Credentials::parse(user) {
                Some(c) => c,
                None => Credentials::new(user, password_from_stdin(user)?),
            },
        };
        if credentials.user().is_empty() {
            return Err(usage("--user needs a name"));
        }
        Ok(Some(credentials))
    }

    /// A client of `endpoints` with these flags' TLS and user, and
    /// `timeout` per call. No I/O yet: the login comes with the first call.
    pub fn client_for(&self, endpoints: &[String], timeout: Duration) -> Result<Client, Failure> {
        let mut b = Client::builder(endpoints.iter().cloned()).call_options(
            CallOptions::default()
                .attempt_timeout(timeout)
                .deadline(Some(timeout)),
        );
        let tls = self.tls();
        if tls.is_set() {
            b = b.tls(tls);
        }
        if let Some(credentials) = self.credentials()? {
            b = b.credentials(credentials);
        }
        Ok(b.build()?)
    }
}

/// The first line of standard input, without its line ending: the
/// password of `user` when neither `--user NAME:PASSWORD` nor `--password`
/// gives it. Refused from a terminal, where it would be echoed. Read once:
/// `nod status` makes a client per endpoint, and `nod txn` / `nod put`
/// read the rest of standard input.
fn password_from_stdin(user: &str) -> Result<String, Failure> {
    static PASSWORD: OnceLock<Result<String, String>> = OnceLock::new();
    let read = PASSWORD.get_or_init(|| {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return Err(format!(
                "no password for user {user:?}: give --user {user}:PASSWORD, --password \
                 or NOD_PASSWORD, or pipe it on standard input"
            ));
        }
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) => Err(format!(
                "no password for user {user:?}: standard input is empty"
            )),
            Ok(_) => {
                let password = line.strip_suffix('\n').unwrap_or(&line);
                Ok(password.strip_suffix('\r').unwrap_or(password).to_string())
            }
            Err(e) => Err(format!("reading the password from standard input: {e}")),
        }
    });
    read.clone().map_err(usage)
}

/// How a command prints its answer (`-w`, as etcdctl's `--write-out`).
/// `table` and `fields` are etcdctl's forms of `snapshot status`; other
/// commands print their simple form for them.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Simple,
    Json,
    Table,
    Fields,
}

/// Why a client command failed: bad usage (exit 2) or the client's error
/// (exit 1, or 3 when the cluster could not be reached in time).
pub enum Failure {
    Usage(String),
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) => f.write_str(m),
            Failure::Client(e) => e.fmt(f),
        }
    }
}

pub fn usage(s: impl Into<String>) -> Failure {
    Failure::Usage(s.into())
}

/// A failure that is neither bad usage nor the server's answer (a file, a
/// backup): printed as is, exit 1.
pub fn failed(message: impl std::fmt::Display) -> Failure {
    Failure::Client(ClientError::Protocol(message.to_string()))
}

pub fn exit_for(f: Failure) -> ExitCode {
    match f {
        Failure::Usage(m) => {
            eprintln!("nod: {m}");
            ExitCode::from(2)
        }
        Failure::Client(ClientError::Status(s)) => {
            let message = match s.message() {
                "" => s.code().description(),
                m => m,
            };
            eprintln!("Error: {message}");
            match s.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            }
        }
        Failure::Client(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn parse_hex(s: &str, what: &str) -> Result<u64, Failure> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| usage(format!("{what} {s:?} is not a hexadecimal id")))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": text(&kv.key),
        "value": text(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": format!("{:x}", kv.lease),
    })
}

pub fn header_json(h: &Option<ResponseHeader>) -> Value {
    let h = h.unwrap_or_default();
    json!({
        "cluster_id": format!("{:x}", h.cluster_id),
        "member_id": format!("{:x}", h.member_id),
        "revision": h.revision,
        "raft_term": h.raft_term,
    })
}

pub fn print_json(v: Value) {
    println!("{v}");
}

pub fn connect(c: &ClientFlags) -> Result<Client, Failure> {
    c.client_for(&c.endpoints, Duration::from_secs(c.command_timeout))
}
