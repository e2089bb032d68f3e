//! Connections and closes as the terminal shows them, for the admin API (`admin.rs`) and the
//! cluster-wide registry (`cluster.rs`) alike: the query a listing asks with, the columns and
//! the cells of each row.

use connwarden::view::{Closed, Connection, Page};

use super::table::table;

/// A listing's parameters, as `name`/`value` pairs.
#[derive(Default)]
pub(super) struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn param(&mut self, name: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.0.push((name.to_owned(), value.to_owned()));
        }
    }

    /// As a URL query string, percent-encoded.
    pub fn encoded(&self) -> String {
        let encode = |text: &str| -> String {
            text.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        let pairs: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        pairs.join("&")
    }
}

/// The columns of a connection listing.
pub(super) const CONN_HEADER: [&str; 13] = [
    "ID", "PEER", "AGE", "IDLE", "IN", "OUT", "ITEMS", "ERR", "RTT", "UNACKED", "PROBES", "HB",
    "STATE",
];

/// The columns of a listing of closes.
pub(super) const CLOSED_HEADER: [&str; 9] = [
    "ID", "PEER", "REASON", "CLOSED", "LIFETIME", "DETECTED", "IN", "ITEMS", "ERR",
];

pub(super) fn connections_table(page: &Page<Connection>) -> String {
    let rows: Vec<Vec<String>> = page.items.iter().map(connection_row).collect();
    let shown = page.items.len();
    table(&CONN_HEADER, &rows, "")
        + &format!(
            "{shown} of {} connections (from {})\n",
            page.total, page.offset
        )
}

/// One connection's cells, under [`CONN_HEADER`].
pub(super) fn connection_row(c: &Connection) -> Vec<String> {
    let tcp = c.tcp.as_ref();
    vec![
        c.id.to_string(),
        c.peer.to_string(),
        duration(c.age_s),
        duration(c.idle_in_s),
        c.bytes_in.to_string(),
        c.bytes_out.to_string(),
        c.items.to_string(),
        c.errors.to_string(),
        tcp.map_or("-".into(), |t| rtt(t.rtt_us)),
        tcp.map_or("-".into(), |t| t.unacked.to_string()),
        tcp.map_or("-".into(), |t| t.probes.to_string()),
        if c.heartbeat.negotiated {
            format!("on/{}", c.heartbeat.pings_outstanding)
        } else {
            "off".into()
        },
        tcp.map_or("-".into(), |t| t.state.clone()),
    ]
}

pub(super) fn closed_table(page: &Page<Closed>) -> String {
    let rows: Vec<Vec<String>> = page.items.iter().map(closed_row).collect();
    table(&CLOSED_HEADER, &rows, "") + &format!("{} of {} closes\n", page.items.len(), page.total)
}

/// One close's cells, under [`CLOSED_HEADER`].
pub(super) fn closed_row(c: &Closed) -> Vec<String> {
    vec![
        c.id.to_string(),
        c.peer.to_string(),
        c.reason.clone(),
        c.closed_at.clone(),
        duration(c.lifetime_s),
        duration(c.detection_delay_s),
        c.bytes_in.to_string(),
        c.items.to_string(),
        c.errors.to_string(),
    ]
}

/// `17us` on loopback, `12.3ms` beyond.
fn rtt(us: u32) -> String {
    if us < 1000 {
        format!("{us}us")
    } else {
        format!("{:.1}ms", f64::from(us) / 1000.0)
    }
}

/// `0.25s`, `42s`, `5m02s`, `3h07m`, `2d04h`.
pub(super) fn duration(seconds: f64) -> String {
    let whole = seconds as u64;
    match whole {
        0..10 => format!("{seconds:.2}s"),
        10..60 => format!("{whole}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        3600..86400 => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d{:02}h", whole / 86400, whole % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0.25), "0.25s");
        assert_eq!(duration(42.9), "42s");
        assert_eq!(duration(302.0), "5m02s");
        assert_eq!(duration(3.0 * 3600.0 + 420.0), "3h07m");
        assert_eq!(duration(2.0 * 86400.0 + 4.0 * 3600.0), "2d04h");
    }

    #[test]
    fn parameters_are_percent_encoded() {
        let mut query = Query::default();
        query.param("peer", Some("10.0.0.0/8"));
        query.param("none", None);
        query.param("sort", Some("age"));
        assert_eq!(query.encoded(), "peer=10.0.0.0%2F8&sort=age");
    }
}
