//! Passing sockets to another process: the transport of a binary upgrade (issue 29).
//!
//! An established TCP connection is a file descriptor; a process can give a copy of it to
//! another over a Unix socket (`SCM_RIGHTS`), and the connection lives on for as long as any
//! process holds it: the peer sees neither FIN nor RST when the first process closes its copy.
//! A hand-over channel is a `SOCK_SEQPACKET` socket pair, so that each message keeps its
//! boundaries: a payload (what the receiver needs to know of the sockets, encoded by the
//! caller) and up to [`MAX_FDS`] descriptors that arrive with it, or not at all. Received
//! descriptors are close-on-exec, as the ones the server opens itself.
//!
//! Linux only (other platforms build without it, see README "Platforms"). The calls block:
//! a hand-over is a phase of its own, run off the runtime's workers.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
    SocketType,
};

/// Descriptors one message carries at most (the kernel's `SCM_MAX_FD` is 253): more sockets
/// take more messages.
pub const MAX_FDS: usize = 250;

/// The largest payload of one message: well inside the socket's default send buffer, which
/// bounds a `SOCK_SEQPACKET` message.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The largest payload [`Channel::send_long`] takes: it goes in as many messages as it needs.
pub const MAX_LONG_PAYLOAD: usize = 256 * 1024 * 1024;

/// Why a hand-over message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The system call failed.
    #[error("hand-over socket: {0}")]
    Io(#[from] io::Error),
    /// More descriptors than one message carries.
    #[error("{0} descriptors in one message; at most {MAX_FDS}")]
    TooManyFds(usize),
    /// A payload larger than [`MAX_PAYLOAD`].
    #[error("a payload of {0} bytes; at most {MAX_PAYLOAD}")]
    PayloadTooLarge(usize),
    /// The message or its descriptors did not fit what the receiver expected (a peer that does
    /// not speak this channel's rules).
    #[error("a message arrived truncated")]
    Truncated,
}

/// One end of a hand-over channel.
#[derive(Debug)]
pub struct Channel {
    socket: OwnedFd,
}

/// One message: its payload and the descriptors that came with it.
#[derive(Debug)]
pub struct Received {
    /// The sender's bytes.
    pub payload: Vec<u8>,
    /// The descriptors, in the order they were sent.
    pub fds: Vec<OwnedFd>,
}

impl Channel {
    /// A connected pair (both ends close-on-exec: the end meant for a child is made inheritable
    /// by the code that starts it).
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Channel { socket: a }, Channel { socket: b }))
    }

    /// The end a process was given (inherited, or received itself).
    pub fn from_fd(socket: OwnedFd) -> Channel {
        Channel { socket }
    }

    /// The socket, for the code that passes this end to a child.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Sends `payload` with copies of `fds`; the caller's descriptors stay open.
    pub fn send(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), HandoverError> {
        if fds.len() > MAX_FDS {
            return Err(HandoverError::TooManyFds(fds.len()));
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(HandoverError::PayloadTooLarge(payload.len()));
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(HandoverError::TooManyFds(fds.len()));
        }
        let sent = sendmsg(
            &self.socket,
            &[IoSlice::new(payload)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(io::Error::from)?;
        // A SOCK_SEQPACKET message goes whole or not at all.
        if sent != payload.len() {
            return Err(HandoverError::Truncated);
        }
        Ok(())
    }

    /// Sends a payload of any size up to [`MAX_LONG_PAYLOAD`] with `fds`, as a first message
    /// holding the payload's length, the descriptors and the first bytes, followed by as many
    /// messages as the rest needs. [`Channel::recv_long`] puts it together again.
    pub fn send_long(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), HandoverError> {
        if payload.len() > MAX_LONG_PAYLOAD {
            return Err(HandoverError::PayloadTooLarge(payload.len()));
        }
        let first_len = payload.len().min(MAX_PAYLOAD - 4);
        let mut first = Vec::with_capacity(4 + first_len);
        first.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        first.extend_from_slice(&payload[..first_len]);
        self.send(&first, fds)?;
        for part in payload[first_len..].chunks(MAX_PAYLOAD) {
            self.send(part, &[])?;
        }
        Ok(())
    }

    /// The next payload sent by [`Channel::send_long`], whole, or `None` once the other end is
    /// closed and everything it sent was read.
    pub fn recv_long(&self) -> Result<Option<Received>, HandoverError> {
        let Some(first) = self.recv()? else {
            return Ok(None);
        };
        let Some((length, start)) = first.payload.split_first_chunk::<4>() else {
            return Err(HandoverError::Truncated);
        };
        let length = u32::from_le_bytes(*length) as usize;
        if length > MAX_LONG_PAYLOAD || start.len() > length {
            return Err(HandoverError::Truncated);
        }
        let mut payload = Vec::with_capacity(length);
        payload.extend_from_slice(start);
        while payload.len() < length {
            match self.recv()? {
                Some(part)
                    if part.fds.is_empty() && payload.len() + part.payload.len() <= length =>
                {
                    payload.extend_from_slice(&part.payload)
                }
                _ => return Err(HandoverError::Truncated),
            }
        }
        Ok(Some(Received {
            payload,
            fds: first.fds,
        }))
    }

    /// Makes every later call wait at most `timeout` (`None`: without bound); a call that
    /// waited that long fails with [`io::ErrorKind::WouldBlock`].
    pub fn set_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        use rustix::net::sockopt::{set_socket_timeout, Timeout};
        set_socket_timeout(&self.socket, Timeout::Recv, timeout)?;
        set_socket_timeout(&self.socket, Timeout::Send, timeout)?;
        Ok(())
    }

    /// The next message, or `None` once the other end is closed and everything it sent was
    /// read.
    pub fn recv(&self) -> Result<Option<Received>, HandoverError> {
        let mut payload = vec![0; MAX_PAYLOAD];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let message = recvmsg(
            &self.socket,
            &mut [IoSliceMut::new(&mut payload)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        // Descriptors that arrived are ours to close, whatever else went wrong.
        let mut fds = Vec::new();
        for part in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = part {
                fds.extend(received);
            }
        }
        if message
            .flags
            .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
        {
            return Err(HandoverError::Truncated);
        }
        if message.bytes == 0 && fds.is_empty() {
            return Ok(None);
        }
        payload.truncate(message.bytes);
        Ok(Some(Received { payload, fds }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// A listening socket and an established connection handed over: the connection goes on
    /// through the copy after the original is closed (its peer reads data, not an end of
    /// stream), and the listener's copy accepts new clients.
    #[test]
    fn a_connection_and_a_listener_outlive_the_copies_they_were_sent_from() {
        let (old, new) = Channel::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut peer = TcpStream::connect(addr).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (served, _) = listener.accept().unwrap();
        old.send(b"conn 7", &[listener.as_fd(), served.as_fd()])
            .unwrap();
        drop((listener, served));

        let received = new.recv().unwrap().expect("a message");
        assert_eq!(received.payload, b"conn 7");
        let [listener, served]: [OwnedFd; 2] = received.fds.try_into().unwrap();
        let (listener, mut served) = (TcpListener::from(listener), TcpStream::from(served));
        peer.write_all(b"ping").unwrap();
        let mut buf = [0; 4];
        served.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        served.write_all(b"pong").unwrap();
        let n = peer.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong", "data, not the end of the stream");

        let _second = TcpStream::connect(addr).unwrap();
        listener.accept().expect("the copy accepts");
    }

    #[test]
    fn limits_are_refused_before_sending_and_a_closed_end_reads_as_none() {
        let (old, new) = Channel::pair().unwrap();
        let big = vec![0; MAX_PAYLOAD + 1];
        assert!(matches!(
            old.send(&big, &[]),
            Err(HandoverError::PayloadTooLarge(_))
        ));
        let file = std::fs::File::open("/dev/null").unwrap();
        let many = vec![file.as_fd(); MAX_FDS + 1];
        assert!(matches!(
            old.send(b"x", &many),
            Err(HandoverError::TooManyFds(n)) if n == MAX_FDS + 1
        ));
        // The most one message carries arrives whole, in one message.
        old.send(b"full", &many[..MAX_FDS]).unwrap();
        old.send(b"", &[file.as_fd()]).unwrap();
        drop(old);
        let full = new.recv().unwrap().unwrap();
        assert_eq!(
            (full.payload.as_slice(), full.fds.len()),
            (&b"full"[..], MAX_FDS)
        );
        let bare = new.recv().unwrap().unwrap();
        assert_eq!((bare.payload.len(), bare.fds.len()), (0, 1));
        assert!(new.recv().unwrap().is_none(), "the end of the channel");
    }

    /// A payload many messages long arrives whole, with its descriptors, from another thread
    /// (the socket's buffer holds less than the payload, so the sender waits for the reader).
    #[test]
    fn a_long_payload_arrives_whole_with_its_descriptors() {
        let (old, new) = Channel::pair().unwrap();
        let payload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let sender = std::thread::spawn(move || {
            let file = std::fs::File::open("/dev/null").unwrap();
            old.send_long(&payload, &[file.as_fd(), file.as_fd()])
                .unwrap();
            old.send_long(b"", &[]).unwrap();
        });
        let long = new.recv_long().unwrap().unwrap();
        assert_eq!(long.fds.len(), 2);
        assert!(
            long.payload == expected,
            "the payload arrives whole and in order"
        );
        let empty = new.recv_long().unwrap().unwrap();
        assert!(empty.payload.is_empty() && empty.fds.is_empty());
        sender.join().unwrap();
        assert!(new.recv_long().unwrap().is_none());
        new.set_timeout(Some(Duration::from_millis(10))).unwrap();
    }
}
