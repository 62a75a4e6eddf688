//! `nod put`, `get`, `del`, `txn` and `compact`: etcd's KV service.

use std::io::Read;
use std::process::ExitCode;

use clap::Args;
use nod_client::txn::parse_txn;
use nod_client::KeySpan;
use nod_proto::etcd::etcdserverpb::{range_request, DeleteRangeRequest, PutRequest, RangeRequest};
use serde_json::json;

use super::client::{
    connect, header_json, kv_json, parse_hex, print_json, text, usage, ClientFlags, Failure, Output,
};

/// How a key names a range: itself, a prefix, or everything from it on.
#[derive(Args, Clone, Default)]
pub struct SpanFlags {
    /// Treat the key as a prefix.
    #[arg(long)]
    pub prefix: bool,
    /// Every key from the key on.
    #[arg(long)]
    pub from_key: bool,
}

impl SpanFlags {
    pub fn span(&self, range_end: &Option<String>) -> Result<KeySpan, String> {
        match (self.prefix, self.from_key, range_end) {
            (true, true, _) => Err("--prefix and --from-key exclude each other".into()),
            (true, _, Some(_)) | (_, true, Some(_)) => {
                Err("a range end cannot be combined with --prefix or --from-key".into())
            }
            (true, false, None) => Ok(KeySpan::Prefix),
            (false, true, None) => Ok(KeySpan::FromKey),
            (false, false, Some(end)) => Ok(KeySpan::Until(end.as_bytes().to_vec())),
            (false, false, None) => Ok(KeySpan::Single),
        }
    }
}

#[derive(Args)]
pub struct PutArgs {
    pub key: String,
    /// The value; read from standard input when omitted.
    pub value: Option<String>,
    /// Attach the key to this lease (hex id, as `lease grant` prints it).
    #[arg(long)]
    pub lease: Option<String>,
    /// Print the previous key-value.
    #[arg(long)]
    pub prev_kv: bool,
    /// Keep the current value (update the lease only).
    #[arg(long)]
    pub ignore_value: bool,
    /// Keep the current lease.
    #[arg(long)]
    pub ignore_lease: bool,
}

#[derive(Args)]
pub struct GetArgs {
    pub key: String,
    /// End of the range [key, range_end).
    pub range_end: Option<String>,
    #[command(flatten)]
    pub span: SpanFlags,
    /// At most this many keys.
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Read at this revision (0: latest).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Keys without values.
    #[arg(long)]
    pub keys_only: bool,
    /// Only the number of keys.
    #[arg(long)]
    pub count_only: bool,
    /// Serve from the contacted member without a quorum round (may be stale).
    #[arg(long, visible_alias = "consistency-s")]
    pub serializable: bool,
    /// Sort by KEY, VERSION, CREATE, MODIFY or VALUE.
    #[arg(long)]
    pub sort_by: Option<String>,
    /// ASCEND or DESCEND.
    #[arg(long)]
    pub order: Option<String>,
    /// Print only values.
    #[arg(long)]
    pub print_value_only: bool,
}

#[derive(Args)]
pub struct DelArgs {
    pub key: String,
    pub range_end: Option<String>,
    #[command(flatten)]
    pub span: SpanFlags,
    /// Print the deleted key-values.
    #[arg(long)]
    pub prev_kv: bool,
}

pub async fn put(args: PutArgs, client: ClientFlags) -> Result<ExitCode, Failure> {
    let PutArgs {
        key,
        value,
        lease,
        prev_kv,
        ignore_value,
        ignore_lease,
    } = args;
    // Before reading a value from standard input: a password given there
    // is its first line.
    let mut c = connect(&client)?;
    let value = match value {
        Some(v) => v.into_bytes(),
        None if ignore_value => Vec::new(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| usage(format!("reading the value from stdin: {e}")))?;
            buf
        }
    };
    let lease = match lease {
        Some(l) => parse_hex(&l, "lease")? as i64,
        None => 0,
    };
    let r = c
        .put(PutRequest {
            key: key.into_bytes(),
            value,
            lease,
            prev_kv,
            ignore_value,
            ignore_lease,
        })
        .await?;
    match client.output {
        Output::Json => print_json(json!({
            "header": header_json(&r.header),
            "prev_kv": r.prev_kv.as_ref().map(kv_json),
        })),
        Output::Simple | Output::Table | Output::Fields => {
            println!("OK");
            if let Some(p) = r.prev_kv {
                println!("{}\n{}", text(&p.key), text(&p.value));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn get(args: GetArgs, client: ClientFlags) -> Result<ExitCode, Failure> {
    let GetArgs {
        key,
        range_end,
        span,
        limit,
        rev,
        keys_only,
        count_only,
        serializable,
        sort_by,
        order,
        print_value_only,
    } = args;
    let span = span.span(&range_end).map_err(usage)?;
    let mut req = RangeRequest {
        range_end: span.range_end(key.as_bytes()),
        key: key.into_bytes(),
        limit,
        revision: rev,
        keys_only,
        count_only,
        serializable,
        ..Default::default()
    };
    if let Some(s) = sort_by {
        req.sort_target = sort_target(&s)? as i32;
        req.sort_order = range_request::SortOrder::Ascend as i32;
    }
    if let Some(o) = order {
        req.sort_order = match o.to_ascii_uppercase().as_str() {
            "ASCEND" => range_request::SortOrder::Ascend,
            "DESCEND" => range_request::SortOrder::Descend,
            _ => return Err(usage(format!("--order {o:?}: use ASCEND or DESCEND"))),
        } as i32;
    }
    let mut c = connect(&client)?;
    let r = c.range(req).await?;
    match client.output {
        Output::Json => print_json(json!({
            "header": header_json(&r.header),
            "kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>(),
            "more": r.more,
            "count": r.count,
        })),
        Output::Simple | Output::Table | Output::Fields => {
            if count_only {
                println!("{}", r.count);
            }
            for kv in &r.kvs {
                if !print_value_only {
                    println!("{}", text(&kv.key));
                }
                if !keys_only {
                    println!("{}", text(&kv.value));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn del(args: DelArgs, client: ClientFlags) -> Result<ExitCode, Failure> {
    let DelArgs {
        key,
        range_end,
        span,
        prev_kv,
    } = args;
    let span = span.span(&range_end).map_err(usage)?;
    let mut c = connect(&client)?;
    let r = c
        .delete(DeleteRangeRequest {
            range_end: span.range_end(key.as_bytes()),
            key: key.into_bytes(),
            prev_kv,
        })
        .await?;
    match client.output {
        Output::Json => print_json(json!({
            "header": header_json(&r.header),
            "deleted": r.deleted,
            "prev_kvs": r.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
        })),
        Output::Simple | Output::Table | Output::Fields => {
            println!("{}", r.deleted);
            for kv in &r.prev_kvs {
                println!("{}\n{}", text(&kv.key), text(&kv.value));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a txn in etcdctl's format (`nod_client::txn`) from standard input.
pub async fn txn(client: ClientFlags) -> Result<ExitCode, Failure> {
    // Before reading the txn: a password given on standard input is its
    // first line.
    let mut c = connect(&client)?;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| usage(format!("reading stdin: {e}")))?;
    let req = parse_txn(&input).map_err(|e| usage(e.to_string()))?;
    let r = c.txn(req).await?;
    match client.output {
        Output::Json => print_json(json!({
            "header": header_json(&r.header),
            "succeeded": r.succeeded,
            "responses": r.responses.len(),
        })),
        Output::Simple | Output::Table | Output::Fields => {
            println!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
            use nod_proto::etcd::etcdserverpb::response_op::Response as R;
            for op in r.responses {
                println!();
                match op.response {
                    Some(R::ResponsePut(_)) => println!("OK"),
                    Some(R::ResponseDeleteRange(d)) => println!("{}", d.deleted),
                    Some(R::ResponseRange(g)) => {
                        for kv in g.kvs {
                            println!("{}\n{}", text(&kv.key), text(&kv.value));
                        }
                    }
                    Some(R::ResponseTxn(t)) => {
                        println!("{}", if t.succeeded { "SUCCESS" } else { "FAILURE" })
                    }
                    None => {}
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn compact(revision: i64, client: ClientFlags) -> Result<ExitCode, Failure> {
    let mut c = connect(&client)?;
    c.compact(revision).await?;
    println!("compacted revision {revision}");
    Ok(ExitCode::SUCCESS)
}

fn sort_target(s: &str) -> Result<range_request::SortTarget, Failure> {
    use range_request::SortTarget as T;
    Ok(match s.to_ascii_uppercase().as_str() {
        "KEY" => T::Key,
        "VERSION" => T::Version,
        "CREATE" => T::Create,
        "MODIFY" | "MOD" => T::Mod,
        "VALUE" => T::Value,
        _ => {
            return Err(usage(format!(
                "--sort-by {s:?}: use KEY, VERSION, CREATE, MODIFY or VALUE"
            )))
        }
    })
}
