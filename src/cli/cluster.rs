//! `conns`, `kick` and `closed` with `--nats`: the cluster-wide registry, from any machine that
//! reaches NATS. Every gateway is listed; one that does not answer in time is reported missing
//! (and the command exits 1), never silently left out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use connwarden::config::{Key, NatsConfig};
use connwarden::nats::cluster::{Cluster, GatewayListing};
use serde::Serialize;

use super::rows::{self, Query};
use super::table::table;

/// Where the cluster-wide registry is.
#[derive(Debug, Args)]
pub struct NatsTarget {
    /// NATS server(s) of the gateways' cluster (repeatable or comma-separated): ask every gateway
    /// instead of one admin API.
    #[arg(long = "nats", value_name = "URL", env = Key::NatsUrl.env_var())]
    urls: Vec<String>,
    /// NATS credentials file.
    #[arg(long, value_name = "PATH", env = Key::NatsCreds.env_var())]
    nats_creds: Option<PathBuf>,
    /// File holding a NATS token.
    #[arg(long, value_name = "PATH", env = Key::NatsTokenFile.env_var())]
    nats_token_file: Option<PathBuf>,
    /// NATS user, with --nats-password-file.
    #[arg(long, value_name = "USER", env = Key::NatsUser.env_var())]
    nats_user: Option<String>,
    /// File holding the NATS user's password.
    #[arg(long, value_name = "PATH", env = Key::NatsPasswordFile.env_var())]
    nats_password_file: Option<PathBuf>,
    /// CA certificate for TLS to NATS.
    #[arg(long, value_name = "PATH", env = Key::NatsTlsCa.env_var())]
    nats_tls_ca: Option<PathBuf>,
    /// Subject prefix of the registry (the gateways' nats_registry).
    #[arg(
        long,
        value_name = "PREFIX",
        env = Key::NatsRegistry.env_var(),
        default_value = Key::NatsRegistry.default_text()
    )]
    nats_registry: String,
    /// Time each gateway has to answer before it is reported missing.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = connwarden::config::parse_duration)]
    nats_timeout: Duration,
}

impl NatsTarget {
    /// Whether `--nats` was given.
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    fn config(&self) -> anyhow::Result<NatsConfig> {
        let urls = connwarden::config::parse_nats_urls(&self.urls)
            .map_err(|reason| anyhow::anyhow!("--nats: {reason}"))?;
        Ok(NatsConfig {
            urls,
            creds: self.nats_creds.clone(),
            token_file: self.nats_token_file.clone(),
            user: self.nats_user.clone(),
            password_file: self.nats_password_file.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            registry: self.nats_registry.clone(),
            ..NatsConfig::default()
        })
    }

    /// Runs `work` against the cluster, on a runtime of its own.
    fn run<T>(&self, work: impl AsyncFnOnce(&Cluster) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the Tokio runtime")?;
        let config = self.config()?;
        runtime.block_on(async {
            let cluster = Cluster::connect(&config, self.nats_timeout).await?;
            work(&cluster).await
        })
    }
}

/// One entry of a cluster-wide listing in `--json`: the gateway's name beside the entry.
#[derive(Serialize)]
struct Tagged<'a, T> {
    gateway: &'a str,
    #[serde(flatten)]
    entry: &'a T,
}

/// How each gateway answered, in `--json`.
#[derive(Serialize)]
struct GatewayStatus<'a> {
    name: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    entries: usize,
}

pub fn conns(target: &NatsTarget, query: Query, json: bool) -> anyhow::Result<ExitCode> {
    let listings = target.run(async |cluster| Ok(cluster.connections(&query.0).await?))?;
    show(
        &listings,
        json,
        &rows::CONN_HEADER,
        rows::connection_row,
        "connections",
    )
}

pub fn closed(target: &NatsTarget, query: Query, json: bool) -> anyhow::Result<ExitCode> {
    let listings = target.run(async |cluster| Ok(cluster.closed(&query.0).await?))?;
    show(
        &listings,
        json,
        &rows::CLOSED_HEADER,
        rows::closed_row,
        "closes",
    )
}

pub fn kick(target: &NatsTarget, ids: &[String]) -> anyhow::Result<ExitCode> {
    let mut targets = Vec::new();
    for text in ids {
        let parsed = text
            .split_once('/')
            .and_then(|(gateway, id)| Some((gateway.to_owned(), id.parse::<u64>().ok()?)));
        match parsed {
            Some(target) => targets.push(target),
            None => bail!("{text:?}: with --nats, name a connection as GATEWAY/ID (see connwarden conns --nats)"),
        }
    }
    let failed = target.run(async |cluster| {
        let mut failed = false;
        for (gateway, id) in &targets {
            match cluster.kick(gateway, *id).await {
                Ok(conn) => println!(
                    "{gateway}/{id} {} kicked: age {}, {} items",
                    conn.peer,
                    rows::duration(conn.age_s),
                    conn.items
                ),
                Err(error) => {
                    eprintln!("connwarden: {gateway}/{id}: {error}");
                    failed = true;
                }
            }
        }
        Ok(failed)
    })?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints a cluster-wide listing: a table with the gateway first, or JSON; a line on standard
/// error for each gateway that did not answer. Exits 1 if any did not.
fn show<T: Serialize>(
    listings: &[GatewayListing<T>],
    json: bool,
    header: &[&str],
    row: fn(&T) -> Vec<String>,
    what: &str,
) -> anyhow::Result<ExitCode> {
    let mut missing = false;
    let mut statuses = Vec::new();
    let mut tagged = Vec::new();
    let mut rows = Vec::new();
    for listing in listings {
        let name = listing.gateway.name.as_str();
        match &listing.entries {
            Ok(entries) => {
                statuses.push(GatewayStatus {
                    name,
                    status: "ok",
                    error: None,
                    entries: entries.len(),
                });
                for entry in entries {
                    let mut cells = vec![name.to_owned()];
                    cells.extend(row(entry));
                    rows.push(cells);
                    tagged.push(Tagged {
                        gateway: name,
                        entry,
                    });
                }
            }
            Err(error) => {
                missing = true;
                let status = match error {
                    connwarden::nats::cluster::AskError::Missing(_) => "missing",
                    _ => "error",
                };
                eprintln!("connwarden: gateway {name}: {error}");
                statuses.push(GatewayStatus {
                    name,
                    status,
                    error: Some(error.to_string()),
                    entries: 0,
                });
            }
        }
    }
    if json {
        let body = serde_json::json!({ "gateways": statuses, "items": tagged });
        println!("{body}");
    } else {
        let mut full_header = vec!["GATEWAY"];
        full_header.extend_from_slice(header);
        print!("{}", table(&full_header, &rows, ""));
        let answered = statuses.iter().filter(|s| s.status == "ok").count();
        println!(
            "{} {what} from {answered} of {} gateways",
            rows.len(),
            statuses.len()
        );
    }
    Ok(if missing {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
