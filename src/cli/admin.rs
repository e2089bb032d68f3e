//! `connwarden conns`, `kick`, `closed` and `drain`: the admin API from a terminal.
//!
//! Each reads the API's JSON into the same types the server writes it from
//! (`connwarden::view`), and prints a table like `ss` or Redis's `CLIENT LIST`, or the
//! JSON itself with `--json`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use connwarden::admin::Token;
use connwarden::config::Key;
use connwarden::rebalance::DrainStatus;
use connwarden::view::{Connection, ErrorBody, Page};

use super::cluster::NatsTarget;
use super::rows::{closed_table, connections_table, duration, Query};

/// Where the admin API is, and its token.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// Address of the server's admin API.
    #[arg(
        long,
        value_name = "ADDR",
        env = Key::Admin.env_var(),
        default_value = Key::Admin.default_text()
    )]
    admin: String,
    /// File holding the admin API's bearer token.
    #[arg(long, value_name = "PATH", env = Key::AdminTokenFile.env_var())]
    admin_token_file: Option<PathBuf>,
}

/// Flags of `conns`.
#[derive(Debug, Args)]
pub struct ConnsArgs {
    #[command(flatten)]
    target: AdminTarget,
    #[command(flatten)]
    nats: NatsTarget,
    /// Order: id, age, idle, bytes_in, bytes_out, items, errors, rtt, unacked, probes.
    #[arg(long, default_value = "id")]
    sort: String,
    /// asc or desc [default: asc for id, desc for the others].
    #[arg(long)]
    order: Option<String>,
    /// Rows, at most (up to 10,000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Rows skipped.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Only peers at this address, address:port or network (10.0.0.0/8).
    #[arg(long)]
    peer: Option<String>,
    /// Only connections silent at least this long (30s, 5m).
    #[arg(long, value_name = "DURATION")]
    min_idle: Option<String>,
    /// Only connections in this TCP state (established, close_wait, …).
    #[arg(long)]
    state: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Flags of `kick`.
#[derive(Debug, Args)]
pub struct KickArgs {
    #[command(flatten)]
    target: AdminTarget,
    #[command(flatten)]
    nats: NatsTarget,
    /// Connection ids (from `connwarden conns`); with --nats, GATEWAY/ID.
    #[arg(required = true, value_name = "ID|GATEWAY/ID")]
    ids: Vec<String>,
}

/// Flags of `drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    target: AdminTarget,
    /// Share of the live connections to move (oldest first), above 0 and at most 1.
    #[arg(long, required_unless_present_any = ["status", "cancel"])]
    fraction: Option<f64>,
    /// Window over which they are told goaway, at an even pace (10s, 2m).
    #[arg(long, value_name = "DURATION", required_unless_present_any = ["status", "cancel"])]
    over: Option<String>,
    /// Show the running or last drain's progress instead.
    #[arg(long, conflicts_with_all = ["fraction", "over", "cancel"])]
    status: bool,
    /// Stop the running drain from telling more connections.
    #[arg(long, conflicts_with_all = ["fraction", "over"])]
    cancel: bool,
    /// Print the JSON the admin API answered.
    #[arg(long)]
    json: bool,
}

/// Flags of `closed`.
#[derive(Debug, Args)]
pub struct ClosedArgs {
    #[command(flatten)]
    target: AdminTarget,
    #[command(flatten)]
    nats: NatsTarget,
    /// Only closes with this reason (keepalive_timeout, kicked, …).
    #[arg(long)]
    reason: Option<String>,
    /// Only peers at this address, address:port or network.
    #[arg(long)]
    peer: Option<String>,
    /// Rows, at most (newest first).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// A client of one server's admin API.
struct Api {
    base: String,
    token: Option<Token>,
    agent: ureq::Agent,
}

impl Api {
    fn new(target: &AdminTarget) -> anyhow::Result<Api> {
        let token = target
            .admin_token_file
            .as_deref()
            .map(Token::from_file)
            .transpose()?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(Api {
            base: format!("http://{}", target.admin),
            token,
            agent,
        })
    }

    /// Calls `method path` and returns the status and body; an API error becomes an error
    /// naming its code and message.
    fn call(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {}", token.as_str()));
        }
        let request = request.body(()).context("building the request")?;
        let mut response = self
            .agent
            .run(request)
            .with_context(|| format!("cannot reach the admin API at {url}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .context("reading the admin API's answer")?;
        if status >= 400 {
            match serde_json::from_str::<ErrorBody>(&body) {
                Ok(error) => bail!(
                    "{method} {path}: {} ({status} {})",
                    error.error.message,
                    error.error.code
                ),
                Err(_) => bail!("{method} {path}: HTTP {status}: {body}"),
            }
        }
        Ok((status, body))
    }
}

pub fn conns(args: ConnsArgs) -> anyhow::Result<ExitCode> {
    let mut query = Query::default();
    query.param("sort", Some(&args.sort));
    query.param("order", args.order.as_deref());
    query.param("limit", Some(&args.limit.to_string()));
    query.param("offset", Some(&args.offset.to_string()));
    query.param("peer", args.peer.as_deref());
    query.param("min_idle", args.min_idle.as_deref());
    query.param("state", args.state.as_deref());
    if args.nats.enabled() {
        return super::cluster::conns(&args.nats, query, args.json);
    }
    let api = Api::new(&args.target)?;
    let path = format!("/connections?{}", query.encoded());
    show_page(
        &api,
        &path,
        args.json,
        "a connection list",
        connections_table,
    )
}

pub fn kick(args: KickArgs) -> anyhow::Result<ExitCode> {
    if args.nats.enabled() {
        return super::cluster::kick(&args.nats, &args.ids);
    }
    let api = Api::new(&args.target)?;
    let mut failed = false;
    for id in args.ids {
        let Ok(id) = id.parse::<u64>() else {
            eprintln!("connwarden: {id:?} is not a connection id (GATEWAY/ID needs --nats)");
            failed = true;
            continue;
        };
        match api.call("DELETE", &format!("/connections/{id}")) {
            Ok((status, body)) => {
                let conn: Connection = serde_json::from_str(&body)
                    .context("the admin API's answer is not a connection")?;
                let outcome = if status == 202 {
                    "kicked (not closed yet)"
                } else {
                    "kicked"
                };
                println!(
                    "{id} {} {outcome}: age {}, {} items",
                    conn.peer,
                    duration(conn.age_s),
                    conn.items
                );
            }
            Err(error) => {
                eprintln!("connwarden: {error:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub fn drain(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.target)?;
    let (method, path) = match (&args.fraction, &args.over) {
        _ if args.status => ("GET", "/drain".to_owned()),
        _ if args.cancel => ("DELETE", "/drain".to_owned()),
        (Some(fraction), Some(over)) => ("POST", format!("/drain?fraction={fraction}&over={over}")),
        _ => bail!("--fraction and --over are both needed"),
    };
    let (_, body) = api.call(method, &path)?;
    if args.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let status: DrainStatus =
        serde_json::from_str(&body).context("the admin API's answer is not a drain")?;
    println!(
        "drain {} (started {}): {} of {} live connections chosen (fraction {}, oldest first), told goaway over {}: {} told, {} closed as drained for ignoring it; each has {} to reconnect",
        status.state,
        status.started_at,
        status.chosen,
        status.live_at_start,
        status.fraction,
        duration(status.over_s),
        status.told,
        status.closed_as_drained,
        duration(status.reconnect_within_s),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn closed(args: ClosedArgs) -> anyhow::Result<ExitCode> {
    let mut query = Query::default();
    query.param("reason", args.reason.as_deref());
    query.param("peer", args.peer.as_deref());
    query.param("limit", Some(&args.limit.to_string()));
    if args.nats.enabled() {
        return super::cluster::closed(&args.nats, query, args.json);
    }
    let api = Api::new(&args.target)?;
    let path = format!("/closed?{}", query.encoded());
    show_page(&api, &path, args.json, "a list of closes", closed_table)
}

/// GETs a page of a listing and prints it: the API's JSON as it came with `--json`, else the
/// table `render` makes of it.
fn show_page<T: serde::de::DeserializeOwned>(
    api: &Api,
    path: &str,
    json: bool,
    what: &str,
    render: fn(&Page<T>) -> String,
) -> anyhow::Result<ExitCode> {
    let (_, body) = api.call("GET", path)?;
    if json {
        println!("{body}");
    } else {
        let page: Page<T> = serde_json::from_str(&body)
            .with_context(|| format!("the admin API's answer is not {what}"))?;
        print!("{}", render(&page));
    }
    Ok(ExitCode::SUCCESS)
}
