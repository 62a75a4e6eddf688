//! `nod index create|list|describe|drop|rebuild` and `nod query`: Nod's secondary
//! indexes over JSON values and its query language (docs/query.md).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use nod_proto::nodquerypb::{
    index_def, query_request, FieldType, IndexDef, IndexField, IndexSpec, QueryRequest,
};
use serde_json::{json, Value};

use super::client::{connect, header_json, print_json, text, ClientFlags, Failure, Output};

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Declares an index over the JSON values under a prefix; the leader
    /// indexes what is there in steps (see `describe`), new writes at once.
    Create {
        /// 1 to 64 of a-z, 0-9 and _, starting with a letter.
        name: String,
        /// The keys it covers: every key starting with this.
        #[arg(long)]
        prefix: String,
        /// A field as PATH:TYPE (TYPE: bool, number or string), e.g.
        /// `--field city:string --field age:number`; 1 to 4, in sort order.
        #[arg(long = "field", required = true)]
        fields: Vec<String>,
        /// No two keys may hold the same value (the same tuple of every
        /// field): a put or txn that would is refused whole, and a build
        /// that finds two fails (see `rebuild`).
        #[arg(long)]
        unique: bool,
    },
    /// Lists the indexes (over prefixes you may read) and where each stands.
    List,
    /// One index; with --verify, recomputed from the values and compared.
    Describe {
        name: String,
        #[arg(long)]
        verify: bool,
    },
    /// Drops an index and its entries.
    Drop { name: String },
    /// Drops an index's entries and builds it again from the values: a
    /// unique index that failed on duplicates, once they are gone.
    Rebuild { name: String },
}

#[derive(Args)]
pub struct QueryArgs {
    /// The query: SELECT … FROM 'prefix' [WHERE …] [ORDER BY …] [LIMIT n]
    /// [AT REVISION r] [SERIALIZABLE]; EXPLAIN first for the plan only.
    pub text: String,
    /// How to find the rows: the planner's choice, every key under the
    /// prefix, or one index (`index:NAME`), to compare.
    #[arg(long, default_value = "best")]
    pub plan: String,
    /// Rows per answer (at most 10,000): with more to come, the answer
    /// ends with a cursor for `--cursor`.
    #[arg(long, default_value_t = 0)]
    pub page_size: u32,
    /// A cursor an earlier page of the same query printed: the next page,
    /// at that page's revision.
    #[arg(long)]
    pub cursor: Option<String>,
    /// With --page-size: every page, one request each, until the last.
    #[arg(long, requires = "page_size")]
    pub all: bool,
}

fn field(arg: &str) -> Result<IndexField, Failure> {
    let (path, ty) = arg.rsplit_once(':').ok_or_else(|| {
        Failure::Usage(format!("--field {arg:?}: give PATH:TYPE, e.g. age:number"))
    })?;
    let ty = match ty {
        "bool" => FieldType::Bool,
        "number" => FieldType::Number,
        "string" => FieldType::String,
        other => {
            return Err(Failure::Usage(format!(
                "--field {arg:?}: type {other:?} is not bool, number or string"
            )))
        }
    };
    Ok(IndexField {
        path: path.to_string(),
        r#type: ty as i32,
    })
}

fn type_name(t: i32) -> &'static str {
    match FieldType::try_from(t) {
        Ok(FieldType::Bool) => "bool",
        Ok(FieldType::Number) => "number",
        Ok(FieldType::String) => "string",
        _ => "?",
    }
}

/// Where an index stands, in words.
fn state(d: &IndexDef) -> String {
    match &d.state {
        Some(index_def::State::Building(b)) => format!(
            "building ({} of {} keys, from revision {})",
            b.keys_done, b.keys_total, b.since
        ),
        Some(index_def::State::Ready(r)) => format!("ready (from revision {})", r.since),
        Some(index_def::State::Failed(f)) => format!("failed: {}", f.reason),
        None => "unknown".into(),
    }
}

fn def_json(d: &IndexDef) -> Value {
    let spec = d.spec.clone().unwrap_or_default();
    json!({
        "id": d.id,
        "name": spec.name,
        "prefix": text(&spec.prefix),
        "fields": spec.fields.iter().map(|f| json!({"path": f.path, "type": type_name(f.r#type)})).collect::<Vec<_>>(),
        "unique": spec.unique,
        "state": state(d),
        "ready": matches!(d.state, Some(index_def::State::Ready(_))),
    })
}

fn def_line(d: &IndexDef) -> String {
    let spec = d.spec.clone().unwrap_or_default();
    let fields: Vec<String> = spec
        .fields
        .iter()
        .map(|f| format!("{}:{}", f.path, type_name(f.r#type)))
        .collect();
    format!(
        "{}, {}, {}{}, {}",
        spec.name,
        text(&spec.prefix),
        fields.join(" "),
        if spec.unique { " unique" } else { "" },
        state(d)
    )
}

pub async fn index(command: IndexCommand, client: ClientFlags) -> Result<ExitCode, Failure> {
    let mut c = connect(&client)?;
    match command {
        IndexCommand::Create {
            name,
            prefix,
            fields,
            unique,
        } => {
            let spec = IndexSpec {
                name,
                prefix: prefix.into_bytes(),
                fields: fields.iter().map(|f| field(f)).collect::<Result<_, _>>()?,
                unique,
            };
            let r = c.index_create(spec).await?;
            let d = r.index.unwrap_or_default();
            match client.output {
                Output::Json => {
                    print_json(json!({"header": header_json(&r.header), "index": def_json(&d)}))
                }
                Output::Simple | Output::Table | Output::Fields => {
                    println!(
                        "index {} created: {}",
                        d.spec.as_ref().map_or("", |s| &s.name),
                        state(&d)
                    )
                }
            }
        }
        IndexCommand::List => {
            let all = c.index_list().await?;
            match client.output {
                Output::Json => {
                    print_json(json!({"indexes": all.iter().map(def_json).collect::<Vec<_>>()}))
                }
                Output::Simple | Output::Table | Output::Fields => {
                    for d in &all {
                        println!("{}", def_line(d));
                    }
                }
            }
        }
        IndexCommand::Describe { name, verify } => {
            let r = c.index_describe(&name, verify).await?;
            let d = r.index.clone().unwrap_or_default();
            let bad = r.verified && (r.entries_missing > 0 || r.entries_extra > 0);
            match client.output {
                Output::Json => {
                    let mut v = json!({"header": header_json(&r.header), "index": def_json(&d)});
                    if r.verified {
                        v["verify"] = json!({
                            "entries_expected": r.entries_expected,
                            "entries_missing": r.entries_missing,
                            "entries_extra": r.entries_extra,
                        });
                    }
                    print_json(v)
                }
                Output::Simple | Output::Table | Output::Fields => {
                    println!("{}", def_line(&d));
                    if r.verified {
                        println!(
                            "verified: {} entries expected, {} missing, {} extra",
                            r.entries_expected, r.entries_missing, r.entries_extra
                        );
                    }
                }
            }
            if bad {
                eprintln!("Error: index {name} does not match the values it covers");
                return Ok(ExitCode::FAILURE);
            }
        }
        IndexCommand::Drop { name } => {
            let r = c.index_drop(&name).await?;
            match client.output {
                Output::Json => print_json(
                    json!({"header": header_json(&r.header), "dropped": r.index.as_ref().map(def_json)}),
                ),
                Output::Simple | Output::Table | Output::Fields => println!("index {name} dropped"),
            }
        }
        IndexCommand::Rebuild { name } => {
            let r = c.index_rebuild(&name).await?;
            let d = r.index.unwrap_or_default();
            match client.output {
                Output::Json => {
                    print_json(json!({"header": header_json(&r.header), "index": def_json(&d)}))
                }
                Output::Simple | Output::Table | Output::Fields => {
                    println!("index {name} rebuilding: {}", state(&d))
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn query(args: QueryArgs, client: ClientFlags) -> Result<ExitCode, Failure> {
    let (plan, index) = match args.plan.as_str() {
        "best" => (query_request::Plan::Best, String::new()),
        "prefix" => (query_request::Plan::PrefixScan, String::new()),
        p => match p.strip_prefix("index:") {
            Some(name) if !name.is_empty() => (query_request::Plan::Index, name.to_string()),
            _ => {
                return Err(Failure::Usage(format!(
                    "--plan {p:?}: give best, prefix or index:NAME"
                )))
            }
        },
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut cursor = match &args.cursor {
        Some(c) => b64
            .decode(c.trim())
            .map_err(|_| Failure::Usage(format!("--cursor {c:?}: not a cursor nod printed")))?,
        None => Vec::new(),
    };
    let mut c = connect(&client)?;
    let mut rows: Vec<Vec<Value>> = Vec::new();
    let (r, stats) = loop {
        let r = c
            .query_with(QueryRequest {
                text: args.text.clone(),
                plan: plan as i32,
                index: index.clone(),
                page_size: args.page_size,
                cursor,
            })
            .await?;
        rows.extend(r.rows.iter().map(|row| {
            row.cells
                .iter()
                .map(|c| serde_json::from_str(c).unwrap_or_else(|_| Value::String(c.clone())))
                .collect::<Vec<Value>>()
        }));
        let stats = r.stats.unwrap_or_default();
        if !args.all || r.cursor.is_empty() {
            break (r, stats);
        }
        cursor = r.cursor;
    };
    let next = (!r.cursor.is_empty()).then(|| b64.encode(&r.cursor));
    match client.output {
        Output::Json => print_json(json!({
            "header": header_json(&r.header),
            "revision": r.revision,
            "columns": r.columns,
            "rows": rows,
            "count": r.counted.then_some(r.count),
            "stats": {"entries": stats.entries, "docs": stats.docs, "matched": stats.matched},
            "plan": r.plan,
            "cursor": next,
        })),
        Output::Simple | Output::Fields | Output::Table if r.columns.is_empty() => {
            // EXPLAIN: the plan only.
            print!("{}", r.plan);
            if !r.plan.ends_with('\n') {
                println!();
            }
        }
        Output::Table => print!("{}", table(&r.columns, &rows)),
        Output::Simple | Output::Fields => {
            println!("{}", r.columns.join("\t"));
            for row in &rows {
                let cells: Vec<String> = row.iter().map(cell).collect();
                println!("{}", cells.join("\t"));
            }
        }
    }
    if let (Some(next), false) = (&next, client.output == Output::Json) {
        eprintln!("more rows: the next page with --cursor {next}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A cell as text: strings without quotes, everything else as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows under their column names, left-aligned, separated by a rule.
fn table(columns: &[String], rows: &[Vec<Value>]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(cell).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .filter_map(|r| r.get(i))
                .map(|s| s.chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: &[String]| -> String {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let mut out = line(columns) + "\n";
    out += &widths
        .iter()
        .map(|w| "-".repeat(*w))
        .collect::<Vec<_>>()
        .join("-+-");
    out.push('\n');
    for r in &cells {
        out += &line(r);
        out.push('\n');
    }
    out
}
