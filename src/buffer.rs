//! The connections' buffers hold memory only while bytes are pending: an idle connection keeps
//! none (the budget per idle connection, `bench/idle_memory.sh`, is under 1 KiB, and a 4 KiB
//! buffer kept for ever would quintuple it).

use bytes::BytesMut;

/// Bytes asked of the kernel per read. Objects (and TLS records) larger than this take several
/// reads.
pub(crate) const READ_CHUNK: usize = 4096;

/// Frees an empty buffer's memory. Tested by emptiness, not capacity: a buffer whose reads
/// filled it exactly and were all taken has no capacity left but still holds its allocation.
pub(crate) fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
}
