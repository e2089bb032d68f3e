//! Who live connections say they are: the name each authenticated under, the `client_id` its
//! `hello` carried, and for each `client_id` the one live connection that holds it, so that a
//! client coming back supersedes its own stale connection (takeover).
//!
//! Apart from the map of entries, under a lock of its own: only connections that authenticated
//! or gave a `client_id` have an entry here (their `ConnInfo::named` flag says so, so that the
//! others never take this lock).

use std::collections::HashMap;
use std::sync::Arc;

/// What [`Identities::claim`] decided for a connection giving a `client_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// No live connection held it: this one does now.
    Held,
    /// Connection `0` held it, under the same authenticated name (or none on either side):
    /// this one holds it now, and that one is to close as `superseded`.
    Superseding(u64),
    /// Connection `holder` holds it under another authenticated name: it keeps it, and this
    /// connection goes on without holding it.
    Refused {
        /// The connection holding the `client_id`.
        holder: u64,
    },
    /// This connection came from a departing process (an upgrade) and connection `0`, accepted
    /// here meanwhile under the same name, is the client's newer one: this one is to close.
    Outdated(u64),
}

/// Whether a connection giving a `client_id` is the client's newest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Its `hello` just came.
    New,
    /// A departing process handed it over, with the `client_id` its `hello` gave there.
    HandedOver,
}

/// The identities of live connections, by connection id.
#[derive(Debug, Default)]
pub(super) struct Identities {
    by_conn: HashMap<u64, Identity>,
    /// The live connection holding each `client_id`.
    holders: HashMap<Arc<str>, u64>,
}

#[derive(Debug, Default)]
pub(super) struct Identity {
    /// The name it authenticated under.
    pub(super) auth_name: Option<Arc<str>>,
    /// The `client_id` its `hello` gave.
    pub(super) client_id: Option<Arc<str>>,
    /// The `client_id` this connection holds (not one it gave and was refused).
    holds: Option<Arc<str>>,
}

impl Identities {
    pub(super) fn set_auth_name(&mut self, id: u64, name: Arc<str>) {
        self.by_conn.entry(id).or_default().auth_name = Some(name);
    }

    pub(super) fn auth_name(&self, id: u64) -> Option<Arc<str>> {
        self.by_conn.get(&id)?.auth_name.clone()
    }

    /// Connection `id` gives `client_id`: it holds it unless a live connection authenticated
    /// under another name does. Authenticate first: the names compared are those set so far.
    pub(super) fn claim(&mut self, id: u64, client_id: Arc<str>, arrival: Arrival) -> Claim {
        self.give(id, Arc::clone(&client_id));
        let name = self.auth_name(id);
        let claim = match self.holders.get(&client_id) {
            None => Claim::Held,
            Some(&holder) if holder == id => return Claim::Held,
            Some(&holder) if self.auth_name(holder) != name => return Claim::Refused { holder },
            Some(&holder) if arrival == Arrival::HandedOver => return Claim::Outdated(holder),
            Some(&holder) => {
                if let Some(superseded) = self.by_conn.get_mut(&holder) {
                    superseded.holds = None;
                }
                Claim::Superseding(holder)
            }
        };
        let identity = self.by_conn.entry(id).or_default();
        if let Some(before) = identity.holds.replace(Arc::clone(&client_id)) {
            // A second `hello` with another `client_id`: the first is let go.
            self.holders.remove(&before);
        }
        self.holders.insert(client_id, id);
        claim
    }

    /// Connection `id` gave `client_id`, without claiming it (takeover off).
    pub(super) fn give(&mut self, id: u64, client_id: Arc<str>) {
        self.by_conn.entry(id).or_default().client_id = Some(client_id);
    }

    /// Forgets connection `id` (it closed or moved to another process), letting go of the
    /// `client_id` it holds; returns who it was.
    pub(super) fn remove(&mut self, id: u64) -> Identity {
        let Some(mut identity) = self.by_conn.remove(&id) else {
            return Identity::default();
        };
        if let Some(client_id) = identity.holds.take() {
            if self.holders.get(&client_id) == Some(&id) {
                self.holders.remove(&client_id);
            }
        }
        identity
    }

    /// Live connections holding a `client_id`.
    #[cfg(test)]
    pub(super) fn holders(&self) -> usize {
        self.holders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Arrival::New;

    #[test]
    fn a_handed_over_connection_yields_to_one_accepted_meanwhile() {
        let mut ids = Identities::default();
        assert_eq!(ids.claim(9, "dev-7".into(), New), Claim::Held);
        assert_eq!(
            ids.claim(3, "dev-7".into(), Arrival::HandedOver),
            Claim::Outdated(9)
        );
        assert_eq!(ids.holders.get("dev-7"), Some(&9));
        assert_eq!(
            ids.claim(4, "dev-8".into(), Arrival::HandedOver),
            Claim::Held
        );
    }

    #[test]
    fn a_client_coming_back_supersedes_its_stale_connection() {
        let mut ids = Identities::default();
        assert_eq!(ids.claim(1, "dev-7".into(), New), Claim::Held);
        assert_eq!(ids.claim(2, "dev-8".into(), New), Claim::Held);
        assert_eq!(ids.claim(3, "dev-7".into(), New), Claim::Superseding(1));
        // The superseded one closing does not let go of what its successor holds.
        ids.remove(1);
        assert_eq!(ids.claim(4, "dev-7".into(), New), Claim::Superseding(3));
        ids.remove(3);
        ids.remove(4);
        ids.remove(2);
        assert_eq!(ids.holders(), 0);
        assert!(ids.by_conn.is_empty());
    }

    #[test]
    fn only_the_same_authenticated_name_may_supersede() {
        let mut ids = Identities::default();
        ids.set_auth_name(1, "alice".into());
        assert_eq!(ids.claim(1, "dev-7".into(), New), Claim::Held);
        ids.set_auth_name(2, "mallory".into());
        assert_eq!(
            ids.claim(2, "dev-7".into(), New),
            Claim::Refused { holder: 1 }
        );
        // Unauthenticated against authenticated: refused too.
        assert_eq!(
            ids.claim(3, "dev-7".into(), New),
            Claim::Refused { holder: 1 }
        );
        ids.set_auth_name(4, "alice".into());
        assert_eq!(ids.claim(4, "dev-7".into(), New), Claim::Superseding(1));
        // The refused ones held nothing: their closes let go of nothing.
        ids.remove(2);
        ids.remove(3);
        assert_eq!(ids.holders.get("dev-7"), Some(&4));
        let gone = ids.remove(4);
        assert_eq!(gone.auth_name.as_deref(), Some("alice"));
        assert_eq!(gone.client_id.as_deref(), Some("dev-7"));
        assert_eq!(ids.holders(), 0);
    }

    #[test]
    fn a_second_hello_lets_the_first_client_id_go() {
        let mut ids = Identities::default();
        assert_eq!(ids.claim(1, "a".into(), New), Claim::Held);
        assert_eq!(ids.claim(1, "a".into(), New), Claim::Held);
        assert_eq!(ids.claim(1, "b".into(), New), Claim::Held);
        assert_eq!(ids.claim(2, "a".into(), New), Claim::Held);
        ids.remove(1);
        assert_eq!(ids.holders.get("a"), Some(&2));
        assert_eq!(ids.holders(), 1);
    }
}
