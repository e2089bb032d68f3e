//! A binary upgrade under live connections (`SIGUSR2` in `connwarden serve`): the old process
//! starts the new one, hands it the listening sockets, then every connection that can move,
//! and exits once its queue is in the sink; the clients see neither a close nor a pause longer
//! than the hand-over.
//!
//! The two processes speak over a hand-over channel ([`crate::handover`]) that the new one
//! inherits, its descriptor named by [`CHANNEL_VAR`]:
//!
//! 1. new → old `hello` (its pid), once its configuration is valid and its server built;
//! 2. old → new `listeners`, with the data listeners' and the admin listener's descriptors;
//! 3. new → old `ready`, once it accepts with its sink open (both processes accept for a
//!    moment, from the same sockets: no connection attempt is refused);
//! 4. old → new `conns`, batches of up to [`MAX_FDS`] connections with their state
//!    (`crate::conn` says what a connection carries, and when it can leave);
//! 5. old → new `done`.
//!
//! A new process that cannot be started, ends before `ready`, or is not ready within
//! `upgrade_timeout` changes nothing: the old one has handed out copies of its listeners
//! only, and goes on serving (`connwarden_upgrades_total{result}` counts each outcome).
//!
//! Linux only, as the channel.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::conn::{Departed, HandedState};
use crate::handover::{Channel, HandoverError, MAX_FDS};

/// The environment variable that names the inherited channel's descriptor in the new process.
/// Not `CONNWARDEN_…`: those are configuration keys.
pub const CHANNEL_VAR: &str = "CW_UPGRADE_FD";

/// Set once [`Inherited::from_env`] has looked at the descriptor [`CHANNEL_VAR`] names: the
/// variable stays set (removing it races with any thread that reads the environment), so this
/// flag is what keeps a second call from owning, and so closing, the same descriptor again.
static CHANNEL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Why an upgrade did not happen, or why a new process could not take over.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The new executable could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// What was started.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The new process ended before it was ready.
    #[error("the new process ended before it was ready ({0})")]
    Exited(String),
    /// The new process was not ready in time.
    #[error("the new process was not ready within {0:?}")]
    Timeout(Duration),
    /// The other process sent what this protocol does not expect.
    #[error("the other process does not speak the hand-over protocol: {0}")]
    Protocol(String),
    /// The channel failed.
    #[error(transparent)]
    Channel(#[from] HandoverError),
    /// A socket could not be used.
    #[error("hand-over: {0}")]
    Io(#[from] std::io::Error),
    /// The server ended before the upgrade could start.
    #[error("the server is not running")]
    NotRunning,
    /// [`Inherited::from_env`] was called again: the descriptor is the first call's.
    #[error("the channel {CHANNEL_VAR} names was taken already")]
    AlreadyTaken,
}

impl UpgradeError {
    /// The label of `connwarden_upgrades_total{result}` for this failure.
    pub fn result(&self) -> &'static str {
        match self {
            UpgradeError::Spawn { .. } => "spawn_failed",
            UpgradeError::Exited(_) => "exited",
            UpgradeError::Timeout(_) => "timeout",
            _ => "refused",
        }
    }
}

/// One message's header; the bytes of the connections follow it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Note {
    Hello { pid: u32, version: String },
    Listeners { data: usize, admin: bool },
    Ready,
    Conns { conns: Vec<HandedState> },
    Done { handed_over: u64 },
}

/// Encodes a header and the bytes that follow it.
fn encode(note: &Note, tail: &[&[u8]]) -> Vec<u8> {
    let header = serde_json::to_vec(note).expect("a header always encodes");
    let tail_len: usize = tail.iter().map(|part| part.len()).sum();
    let mut payload = Vec::with_capacity(4 + header.len() + tail_len);
    payload.extend_from_slice(&(header.len() as u32).to_le_bytes());
    payload.extend_from_slice(&header);
    for part in tail {
        payload.extend_from_slice(part);
    }
    payload
}

/// The header of a payload, and where the bytes after it begin.
fn decode(payload: &[u8]) -> Result<(Note, usize), UpgradeError> {
    let bad = |what: &str| UpgradeError::Protocol(what.to_string());
    let (length, rest) = payload
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("a message without a header"))?;
    let length = u32::from_le_bytes(*length) as usize;
    if length > rest.len() {
        return Err(bad("a header longer than its message"));
    }
    let note = serde_json::from_slice(&rest[..length])
        .map_err(|e| UpgradeError::Protocol(format!("a header that does not parse: {e}")))?;
    Ok((note, 4 + length))
}

fn send(channel: &Channel, note: &Note, fds: &[BorrowedFd<'_>]) -> Result<(), UpgradeError> {
    Ok(channel.send_long(&encode(note, &[]), fds)?)
}

/// The bytes after a message's header, left in the payload they came in.
struct Tail {
    payload: Vec<u8>,
    from: usize,
}

impl Tail {
    fn bytes(&self) -> &[u8] {
        &self.payload[self.from..]
    }
}

/// A message: its header, the bytes after it, its descriptors.
type Message = (Note, Tail, Vec<OwnedFd>);

/// The next message; `None` at the end of the channel.
fn recv(channel: &Channel) -> Result<Option<Message>, UpgradeError> {
    let Some(received) = channel.recv_long()? else {
        return Ok(None);
    };
    let (note, from) = decode(&received.payload)?;
    let tail = Tail {
        payload: received.payload,
        from,
    };
    Ok(Some((note, tail, received.fds)))
}

/// How to start the new process.
#[derive(Debug)]
pub struct Upgrade {
    command: std::process::Command,
    move_connections: bool,
}

impl Upgrade {
    /// Starts `command` (its program, arguments and environment) as the new process; the
    /// channel's variable is added to its environment.
    pub fn new(command: std::process::Command) -> Upgrade {
        Upgrade {
            command,
            move_connections: true,
        }
    }

    /// The program this process was started as, found again now (so that a file replaced at
    /// its path is what starts), with this process's arguments and environment: what
    /// `connwarden serve` does on `SIGUSR2`. `program` is where `argv[0]` led at start
    /// ([`Program::of_this_process`]).
    pub fn same_program(program: &Program) -> Upgrade {
        let mut command = std::process::Command::new(&program.path);
        command.args(std::env::args_os().skip(1));
        Upgrade::new(command)
    }

    /// Hands over the listeners only: every connection is told `goaway` and stays here until
    /// its client closes it (or `goaway_window` and `shutdown_grace` have passed), as a TLS
    /// connection always is.
    pub fn without_moving_connections(mut self) -> Upgrade {
        self.move_connections = false;
        self
    }

    /// Whether the plain connections move to the new process.
    pub fn moves_connections(&self) -> bool {
        self.move_connections
    }
}

/// Where this process's executable was found at start: `argv[0]` made absolute against the
/// working directory, or looked up in `PATH` (not `/proc/self/exe`, which names the file this
/// process runs, even once it was replaced or deleted).
#[derive(Clone, Debug)]
pub struct Program {
    /// The path.
    pub path: PathBuf,
}

impl Program {
    /// Resolves `argv[0]`; call it at start, before the working directory could change.
    pub fn of_this_process() -> Program {
        let argv0 = PathBuf::from(std::env::args_os().next().unwrap_or_default());
        let path = if argv0.components().count() > 1 {
            std::path::absolute(&argv0).unwrap_or(argv0)
        } else {
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
                .map(|dir| dir.join(&argv0))
                .find(|candidate| candidate.is_file())
                .unwrap_or(argv0)
        };
        Program { path }
    }
}

/// The new process, once it took the listeners and is ready.
pub(crate) struct Successor {
    channel: Arc<Channel>,
    /// The new process's id.
    pub pid: u32,
}

/// Starts the new process and hands it the listeners: `Ok` once it is ready. On any failure,
/// or once `cancelled`, the new process is killed, and nothing of this one changed.
pub(crate) async fn start(
    upgrade: Upgrade,
    listeners: &[OwnedFd],
    admin: Option<&OwnedFd>,
    timeout: Duration,
    cancelled: tokio_util::sync::CancellationToken,
) -> Result<Successor, UpgradeError> {
    let (ours, theirs) = Channel::pair()?;
    let inherited: RawFd = theirs.as_fd().as_raw_fd();
    let mut command = upgrade.command;
    command.env(CHANNEL_VAR, inherited.to_string());
    // SAFETY: the closure runs in the child between fork and exec and only calls fcntl(2),
    // which is async-signal-safe; it touches no memory of the parent's.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            let fd = BorrowedFd::borrow_raw(inherited);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
    let program = PathBuf::from(command.get_program());
    let mut child = tokio::process::Command::from(command)
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            program: program.clone(),
            source,
        })?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, program = %program.display(), "upgrade: the new process started");
    ours.set_timeout(Some(timeout))?;
    let channel = Arc::new(ours);
    let copies = listeners
        .iter()
        .chain(admin)
        .map(|fd| fd.try_clone())
        .collect::<Result<Vec<OwnedFd>, _>>()?;
    let data = listeners.len();
    let has_admin = admin.is_some();
    let talk = {
        let channel = Arc::clone(&channel);
        tokio::task::spawn_blocking(move || handshake(&channel, pid, data, has_admin, &copies))
    };
    let outcome = tokio::select! {
        talked = talk => match talked {
            Ok(result) => result,
            Err(join) => Err(UpgradeError::Protocol(join.to_string())),
        },
        status = child.wait() => Err(UpgradeError::Exited(match status {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        })),
        _ = tokio::time::sleep(timeout) => Err(UpgradeError::Timeout(timeout)),
        // The server is shutting down: no new process is left behind.
        _ = cancelled.cancelled() => Err(UpgradeError::NotRunning),
    };
    match outcome {
        Ok(()) => Ok(Successor { channel, pid }),
        Err(error) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            // A wait on the channel that ran out of its timeout is the child's timeout.
            let error = match error {
                UpgradeError::Channel(HandoverError::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    UpgradeError::Timeout(timeout)
                }
                other => other,
            };
            Err(error)
        }
    }
}

/// Steps 1 to 3 of the protocol, from the old side.
fn handshake(
    channel: &Channel,
    pid: u32,
    data: usize,
    admin: bool,
    listeners: &[OwnedFd],
) -> Result<(), UpgradeError> {
    let ended = || UpgradeError::Exited("it closed the channel".into());
    match recv(channel)?.ok_or_else(ended)? {
        (Note::Hello { pid: said, .. }, _, _) if said == pid || pid == 0 => {}
        (note, _, _) => {
            return Err(UpgradeError::Protocol(format!(
                "expected hello from {pid}, got {note:?}"
            )))
        }
    }
    let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|fd| fd.as_fd()).collect();
    send(channel, &Note::Listeners { data, admin }, &fds)?;
    match recv(channel)?.ok_or_else(ended)? {
        (Note::Ready, _, _) => Ok(()),
        (note, _, _) => Err(UpgradeError::Protocol(format!(
            "expected ready, got {note:?}"
        ))),
    }
}

impl Successor {
    /// Sends a batch of departed connections (at most [`MAX_FDS`]); the copies of their
    /// sockets close here once sent. Blocking: call it off the runtime's workers.
    pub fn send_conns(&self, batch: Vec<Departed>) -> Result<(), UpgradeError> {
        debug_assert!(batch.len() <= MAX_FDS);
        let mut states = Vec::with_capacity(batch.len());
        let mut tail: Vec<&[u8]> = Vec::with_capacity(2 * batch.len());
        let mut fds = Vec::with_capacity(batch.len());
        for departed in &batch {
            states.push(departed.state.clone());
            tail.push(&departed.read);
            tail.push(&departed.out);
            fds.push(departed.socket.as_fd());
        }
        let payload = encode(&Note::Conns { conns: states }, &tail);
        self.channel.send_long(&payload, &fds)?;
        Ok(())
    }

    /// Tells the new process that no connection follows.
    pub fn done(&self, handed_over: u64) -> Result<(), UpgradeError> {
        send(&self.channel, &Note::Done { handed_over }, &[])
    }

    /// The channel, to send from a blocking thread.
    pub fn clone_handle(&self) -> Successor {
        Successor {
            channel: Arc::clone(&self.channel),
            pid: self.pid,
        }
    }
}

/// The channel a new process inherited from the one it takes over from.
#[derive(Debug)]
pub struct Inherited {
    channel: Arc<Channel>,
}

/// The listeners a new process was handed.
#[derive(Debug)]
pub struct HandedListeners {
    /// The data listeners, in the old process's order.
    pub data: Vec<std::net::TcpListener>,
    /// The admin API's listener, if the old process had one.
    pub admin: Option<std::net::TcpListener>,
}

/// What arrives after the listeners.
pub(crate) enum Arrival {
    /// A batch of connections.
    Conns(Vec<Departed>),
    /// No connection follows.
    Done,
}

impl Inherited {
    /// The channel named by [`CHANNEL_VAR`], when this process was started by an upgrade.
    /// The variable is taken at its word only for a descriptor that is a socket.
    ///
    /// The returned value owns the descriptor and closes it when dropped, so only the first
    /// call in a process that finds the variable looks at the descriptor at all; any later
    /// call returns [`UpgradeError::AlreadyTaken`], even if the first one failed (it may have
    /// closed nothing, but the number is no longer known to be the channel). The variable is
    /// left set: removing it is not safe while other threads may read the environment. Call
    /// it once, at start, before this process opens descriptors of its own: the variable is
    /// trusted to name one that was inherited for this purpose.
    pub fn from_env() -> Result<Option<Inherited>, UpgradeError> {
        let Some(value) = std::env::var_os(CHANNEL_VAR) else {
            return Ok(None);
        };
        if CHANNEL_TAKEN.swap(true, Ordering::AcqRel) {
            return Err(UpgradeError::AlreadyTaken);
        }
        let fd: RawFd = value
            .to_str()
            .and_then(|v| v.parse().ok())
            .filter(|fd| *fd >= 0)
            .ok_or_else(|| UpgradeError::Protocol(format!("{CHANNEL_VAR} is not a descriptor")))?;
        // SAFETY: only borrowed to check that it is open and a socket, before it is owned.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let stat = rustix::fs::fstat(borrowed).map_err(std::io::Error::from)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
            return Err(UpgradeError::Protocol(format!(
                "{CHANNEL_VAR}={fd} is not a socket"
            )));
        }
        // SAFETY: the descriptor is open (fstat succeeded), inherited for this purpose, and
        // owned by nothing else in this process: `CHANNEL_TAKEN` lets one call only get here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // A process this one starts later must not inherit it.
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
            .map_err(std::io::Error::from)?;
        Ok(Some(Inherited {
            channel: Arc::new(Channel::from_fd(owned)),
        }))
    }

    /// Says hello and receives the listeners (steps 1 and 2). Blocking, briefly.
    pub fn take_listeners(&self) -> Result<HandedListeners, UpgradeError> {
        let hello = Note::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        send(&self.channel, &hello, &[])?;
        let ended = || UpgradeError::Protocol("the old process closed the channel".into());
        let (note, _, fds) = recv(&self.channel)?.ok_or_else(ended)?;
        let Note::Listeners { data, admin } = note else {
            return Err(UpgradeError::Protocol(format!(
                "expected listeners, got {note:?}"
            )));
        };
        if fds.len() != data + usize::from(admin) {
            return Err(UpgradeError::Protocol(format!(
                "{} descriptors for {data} listeners and admin {admin}",
                fds.len()
            )));
        }
        let mut listeners: Vec<std::net::TcpListener> =
            fds.into_iter().map(std::net::TcpListener::from).collect();
        for listener in &listeners {
            listener.set_nonblocking(true)?;
        }
        let admin = admin.then(|| listeners.pop()).flatten();
        Ok(HandedListeners {
            data: listeners,
            admin,
        })
    }

    /// Tells the old process this one accepts (step 3).
    pub(crate) fn ready(&self) -> Result<(), UpgradeError> {
        send(&self.channel, &Note::Ready, &[])
    }

    /// The next batch of connections, or `Done` (also at the end of the channel: an old process
    /// that ended has nothing more to give). Blocking: call it off the runtime's workers.
    pub(crate) fn next(&self) -> Result<Arrival, UpgradeError> {
        let Some((note, tail, fds)) = recv(&self.channel)? else {
            return Ok(Arrival::Done);
        };
        match note {
            Note::Conns { conns } => {
                if conns.len() != fds.len() {
                    return Err(UpgradeError::Protocol(format!(
                        "{} connections with {} descriptors",
                        conns.len(),
                        fds.len()
                    )));
                }
                let tail = tail.bytes();
                let mut at = 0;
                let mut take = |length: u32| -> Result<bytes::BytesMut, UpgradeError> {
                    let end = at + length as usize;
                    let part = tail.get(at..end).ok_or_else(|| {
                        UpgradeError::Protocol("connection bytes past the message".into())
                    })?;
                    at = end;
                    Ok(bytes::BytesMut::from(part))
                };
                let mut batch = Vec::with_capacity(conns.len());
                for (state, socket) in conns.into_iter().zip(fds) {
                    let read = take(state.read_len)?;
                    let out = take(state.out_len)?;
                    batch.push(Departed {
                        socket,
                        state,
                        read,
                        out,
                    });
                }
                Ok(Arrival::Conns(batch))
            }
            Note::Done { .. } => Ok(Arrival::Done),
            other => Err(UpgradeError::Protocol(format!(
                "expected connections, got {other:?}"
            ))),
        }
    }

    /// Waits without bound from now on (the hand-over of connections takes as long as the
    /// old process's queue does).
    pub(crate) fn wait_without_bound(&self) -> Result<(), UpgradeError> {
        Ok(self.channel.set_timeout(None)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixStream;

    /// The only test that touches [`CHANNEL_VAR`] or [`CHANNEL_TAKEN`], both process-wide: a
    /// second call must not own, and so later close, the descriptor the first one holds (the
    /// number could name another file by then).
    #[test]
    fn the_inherited_channel_is_taken_once() {
        let (theirs, mut peer) = UnixStream::pair().unwrap();
        let fd = theirs.into_raw_fd();
        std::env::set_var(CHANNEL_VAR, fd.to_string());

        let first = Inherited::from_env().unwrap().expect("the channel");
        assert!(matches!(
            Inherited::from_env(),
            Err(UpgradeError::AlreadyTaken)
        ));
        {
            // SAFETY: only borrowed, while `first` owns it, to see that it is still open.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            rustix::io::fcntl_getfd(borrowed).expect("the second call closed nothing");
        }

        drop(first);
        let mut buf = [0; 1];
        assert_eq!(peer.read(&mut buf).unwrap(), 0, "the one owner closed it");
    }
}
