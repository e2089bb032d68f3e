//! NDJSON appended to a file: flushed to the kernel after every batch, synced (`fsync`) as the
//! drain's [`crate::config::FsyncMode`] asks.
//!
//! A new file is started between two batches, never inside one, so every record is whole and
//! in exactly one file: when [`Rotation`] says so (the file is renamed `PATH.<UTC time>` and a
//! new `PATH` opened), or when asked to reopen `PATH` ([`ReopenHandle`], `SIGUSR1` in `serve`:
//! after `logrotate` moved the file). Before the switch the old file is flushed and synced, so
//! an ack still means "synced in the file that holds it". A file is created, renamed and
//! opened with its directory synced too, so that its name survives a power cut with its data.
//!
//! After a failed `fsync` the file is given up ([`Switch::Abandon`]): the kernel may have
//! dropped the pages it could not write and marked them clean, so syncing the same file again
//! would report success over lost data (PostgreSQL's "fsyncgate"). It is renamed aside like a
//! rotated file, never synced again, and a new file takes the records that were not yet
//! acknowledged ([`super::drain`] writes them again).

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::io::AsyncWriteExt;

use super::{encode_batch, Sink, SinkError, SinkFuture};

/// tokio's own buffer size for a file's writes (2 MiB): a larger batch raises it for itself.
const MIN_WRITE_BUFFER: usize = 2 * 1024 * 1024;
use crate::config::Rotation;
use crate::record::Record;

/// Asks a running file sink to reopen its path before its next batch (`logrotate`'s
/// `postrotate`: the file was moved; records go on to the moved file until then).
#[derive(Clone, Debug, Default)]
pub struct ReopenHandle(Arc<AtomicBool>);

impl ReopenHandle {
    /// Requests a reopen; several requests before the next batch make one.
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// Appends records to a file.
pub struct FileSink {
    path: PathBuf,
    file: tokio::fs::File,
    /// A second handle on the same open file, so `fsync` can run while writing goes on;
    /// `None` for what cannot be synced (a FIFO, a character device such as `/dev/null`).
    sync_handle: Option<Arc<std::fs::File>>,
    rotation: Rotation,
    reopen: ReopenHandle,
    /// Bytes in the current file, and when it was opened.
    bytes: u64,
    opened: Instant,
    /// An `fsync` of the current file failed: it is never synced again, and the next batch
    /// goes to a new file.
    abandoned: bool,
}

/// Why a new file is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Switch {
    /// Rotation: the current file is renamed aside first.
    Rotate,
    /// Reopen: the path is opened again (someone moved the file).
    Reopen,
    /// An `fsync` failed: the file is renamed aside unsynced, and a new one opened.
    Abandon,
}

impl FileSink {
    /// Opens (or creates) `path` for appending.
    ///
    /// A file whose last line was cut short (a crash in the middle of a write) gets a newline
    /// first, so the torn line stays one line of its own and the next record is whole. Its items
    /// were never acknowledged: their clients send them again.
    pub async fn open(path: &Path) -> Result<FileSink, SinkError> {
        FileSink::open_rotating(path, Rotation::default(), ReopenHandle::default()).await
    }

    /// Like [`FileSink::open`], starting new files as `rotation` says and when `reopen` asks.
    pub async fn open_rotating(
        path: &Path,
        rotation: Rotation,
        reopen: ReopenHandle,
    ) -> Result<FileSink, SinkError> {
        FileSink::open_with(path, rotation, reopen, true).await
    }

    /// Like [`FileSink::open_rotating`], for a process that takes over from another one still
    /// appending to the file (a binary upgrade): a last line without its newline is that
    /// process's write under way, not a torn line, and is left alone.
    pub async fn open_beside_another_writer(
        path: &Path,
        rotation: Rotation,
        reopen: ReopenHandle,
    ) -> Result<FileSink, SinkError> {
        FileSink::open_with(path, rotation, reopen, false).await
    }

    async fn open_with(
        path: &Path,
        rotation: Rotation,
        reopen: ReopenHandle,
        mend_torn_line: bool,
    ) -> Result<FileSink, SinkError> {
        let owned = path.to_owned();
        let opened = blocking(move || Opened::at(&owned, mend_torn_line))
            .await
            .map_err(|source| SinkError::Io {
                sink: format!("file:{}", path.display()),
                source,
            })?;
        Ok(FileSink {
            path: path.to_owned(),
            file: opened.file,
            sync_handle: opened.sync_handle,
            rotation,
            reopen,
            bytes: opened.bytes,
            opened: Instant::now(),
            abandoned: false,
        })
    }

    /// Whether the next batch goes to a new file, and why.
    fn switch_due(&self) -> Option<Switch> {
        if self.abandoned {
            return Some(Switch::Abandon);
        }
        if self.reopen.take() {
            return Some(Switch::Reopen);
        }
        let full = self.rotation.size.is_some_and(|size| self.bytes >= size);
        let old = self
            .rotation
            .interval
            .is_some_and(|interval| self.opened.elapsed() >= interval);
        (self.bytes > 0 && (full || old)).then_some(Switch::Rotate)
    }

    /// Finishes the current file (flushed, synced, unless it is given up) and starts the next.
    async fn switch(&mut self, switch: Switch) -> io::Result<()> {
        match switch {
            // What it says no longer matters: nothing more is asked of that file.
            Switch::Abandon => drop(self.file.flush().await),
            Switch::Rotate | Switch::Reopen => self.file.flush().await?,
        }
        let (path, keep) = (self.path.clone(), self.rotation.keep);
        let old = match switch {
            Switch::Abandon => None,
            Switch::Rotate | Switch::Reopen => self.sync_handle.clone(),
        };
        let (opened, archived) = blocking(move || {
            if let Some(old) = old {
                old.sync_data()?;
            }
            let archived = match switch {
                Switch::Rotate | Switch::Abandon => match archive(&path, keep) {
                    Ok(to) => Some(to),
                    // Moved away meanwhile (logrotate, before its signal): a new file all the
                    // same, as for a reopen.
                    Err(error) if error.kind() == io::ErrorKind::NotFound => None,
                    Err(error) => return Err(error),
                },
                Switch::Reopen => None,
            };
            Ok((Opened::at(&path, true)?, archived))
        })
        .await?;
        (self.file, self.sync_handle, self.bytes) = (opened.file, opened.sync_handle, opened.bytes);
        self.opened = Instant::now();
        self.abandoned = false;
        match (switch, archived) {
            (Switch::Abandon, to) => {
                tracing::error!(path = %self.path.display(), given_up_as = ?to, "sink file given up after its fsync failed; a new file is open")
            }
            (_, Some(to)) => {
                tracing::info!(path = %self.path.display(), rotated_to = %to.display(), "sink file rotated")
            }
            (_, None) => tracing::info!(path = %self.path.display(), "sink file reopened"),
        }
        Ok(())
    }

    fn io_error(&self) -> impl FnOnce(io::Error) -> SinkError + '_ {
        |source| SinkError::Io {
            sink: self.name(),
            source,
        }
    }
}

/// A file just opened for appending: the handle written, the one synced, and its length.
struct Opened {
    file: tokio::fs::File,
    sync_handle: Option<Arc<std::fs::File>>,
    bytes: u64,
}

impl Opened {
    /// Opens `path` (blocking; see [`open_for_append`]); for a regular file, its directory is
    /// synced too, so that its name (new, or moved here by a rotation) is durable before any
    /// record in it is acknowledged.
    fn at(path: &Path, mend_torn_line: bool) -> io::Result<Opened> {
        let (file, regular) = open_for_append(path, mend_torn_line)?;
        if regular {
            sync_directory_of(path)?;
        }
        let bytes = file.metadata()?.len();
        let sync_handle = match regular {
            true => Some(Arc::new(file.try_clone()?)),
            false => None,
        };
        Ok(Opened {
            file: tokio::fs::File::from_std(file),
            sync_handle,
            bytes,
        })
    }
}

/// Syncs the directory that holds `path` (its entries: names created, renamed or removed).
/// A filesystem that cannot sync a directory (`EINVAL`) has nothing more to offer.
fn sync_directory_of(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match std::fs::File::open(dir)?.sync_all() {
        Err(error) if error.kind() == io::ErrorKind::InvalidInput => Ok(()),
        other => other,
    }
}

/// Runs blocking file work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
}

/// Renames `path` aside to `PATH.<UTC time to the millisecond>` (`-N` added if taken), then
/// deletes the oldest rotated files beyond `keep`. Returns the new name.
fn archive(path: &Path, keep: Option<usize>) -> io::Result<PathBuf> {
    let stamp: String = humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let base = format!("{}.{stamp}", path.display());
    let mut to = PathBuf::from(&base);
    let mut n = 0;
    while to.exists() {
        n += 1;
        to = PathBuf::from(format!("{base}-{n}"));
    }
    std::fs::rename(path, &to)?;
    if let Some(keep) = keep {
        let mut rotated = rotated_files(path)?;
        rotated.sort();
        let excess = rotated.len().saturating_sub(keep);
        for (_, old) in rotated.into_iter().take(excess) {
            std::fs::remove_file(&old)?;
        }
    }
    Ok(to)
}

/// The rotated files of `path`, each with its place in time (stamp, then `-N`).
fn rotated_files(path: &Path) -> io::Result<Vec<((String, u32), PathBuf)>> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let (stamp, n) = match rest.split_once('-') {
            Some((stamp, n)) => match n.parse() {
                Ok(n) => (stamp, n),
                Err(_) => continue,
            },
            None => (rest, 0),
        };
        // 20261125T094100.123Z
        let is_stamp = stamp.len() == 20 && stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T';
        if is_stamp {
            out.push(((stamp.to_owned(), n), entry.path()));
        }
    }
    Ok(out)
}

/// Opens `path` for appending; says whether it is a regular file (which can be synced and,
/// with `mend_torn_line`, checked for a torn last line).
fn open_for_append(path: &Path, mend_torn_line: bool) -> io::Result<(std::fs::File, bool)> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let metadata = file.metadata()?;
    if mend_torn_line && metadata.is_file() && metadata.len() > 0 {
        let mut reader = std::fs::File::open(path)?;
        reader.seek(SeekFrom::End(-1))?;
        let mut last = [0u8; 1];
        reader.read_exact(&mut last)?;
        if last[0] != b'\n' {
            tracing::warn!(path = %path.display(), "the file ends with a partial line (an interrupted write); starting the next record on a new line");
            io::Write::write_all(&mut file, b"\n")?;
        }
    }
    Ok((file, metadata.is_file()))
}

impl Sink for FileSink {
    fn write_batch<'a>(&'a mut self, batch: &'a [Record]) -> SinkFuture<'a> {
        Box::pin(async move {
            if let Some(switch) = self.switch_due() {
                self.switch(switch).await.map_err(self.io_error())?;
            }
            let buf = encode_batch(batch);
            self.bytes += buf.len() as u64;
            // The whole batch in one write(2): appends to a regular file do not interleave, so
            // another process appending to the same file (both sides of a binary upgrade)
            // never cuts a line in two. tokio writes at most its buffer's size at a time.
            self.file.set_max_buf_size(buf.len().max(MIN_WRITE_BUFFER));
            if let Err(error) = self.file.write_all(&buf).await {
                return Err(self.io_error()(error));
            }
            // tokio's File writes on a blocking thread; flush waits until the kernel has it all.
            if let Err(error) = self.file.flush().await {
                return Err(self.io_error()(error));
            }
            Ok(())
        })
    }

    fn sync(&mut self) -> Option<SinkFuture<'static>> {
        let handle = Arc::clone(self.sync_handle.as_ref()?);
        let sink = self.name();
        if self.abandoned {
            // Never again on this file (see the module's docs).
            return Some(Box::pin(async move {
                Err(SinkError::Io {
                    sink,
                    source: io::Error::other("an earlier fsync of this file failed"),
                })
            }));
        }
        Some(Box::pin(async move {
            tokio::task::spawn_blocking(move || handle.sync_data())
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(|source| SinkError::Io { sink, source })
        }))
    }

    fn start_afresh_after_failed_sync(&mut self) -> bool {
        // Only a file that syncs can fail to; the next batch goes to a new one.
        self.abandoned = self.sync_handle.is_some();
        self.abandoned
    }

    fn name(&self) -> String {
        format!("file:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record::new(
            1,
            "127.0.0.1:9".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            bytes::Bytes::from_static(br#"{"ip":"192.0.2.1"}"#),
            None,
        )
    }

    #[tokio::test]
    async fn a_torn_last_line_is_closed_before_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.ndjson");
        std::fs::write(&path, "{\"whole\":1}\n{\"torn").unwrap();
        let mut sink = FileSink::open(&path).await.unwrap();
        sink.write_batch(&[record()]).await.unwrap();
        sink.sync().expect("a regular file syncs").await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[1], "{\"torn");
        let last: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(last["item"]["ip"], "192.0.2.1");
    }

    /// Both sides of a binary upgrade append to the same file for a while: each batch goes in
    /// one write, so batches larger than tokio's own buffer (2 MiB) from two writers at once
    /// never cut each other's lines; and the process that takes over leaves the other's
    /// unfinished last line alone instead of ending it with a newline of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_writers_of_one_file_never_cut_each_others_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.ndjson");
        std::fs::write(&path, "{\"whole\":1}\n{\"under way").unwrap();
        let rotation = Rotation::default();
        let beside = FileSink::open_beside_another_writer(&path, rotation, Default::default());
        let mut second = beside.await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"whole\":1}\n{\"under way",
            "the other writer's line is left to it"
        );
        std::fs::write(&path, "").unwrap();
        let mut first = FileSink::open(&path).await.unwrap();
        let batch: Vec<Record> = (0..30_000).map(|_| record()).collect();
        let size = encode_batch(&batch).len();
        assert!(size > MIN_WRITE_BUFFER, "{size} bytes a batch");
        let batch = Arc::new(batch);
        let (a, b) = (Arc::clone(&batch), Arc::clone(&batch));
        let one = tokio::spawn(async move {
            for _ in 0..4 {
                first.write_batch(&a).await.unwrap();
            }
        });
        let two = tokio::spawn(async move {
            for _ in 0..4 {
                second.write_batch(&b).await.unwrap();
            }
        });
        one.await.unwrap();
        two.await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = 0;
        for line in text.lines() {
            let parsed: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("line {lines} is cut: {e}: {line:.80}"));
            assert_eq!(parsed["item"]["ip"], "192.0.2.1");
            lines += 1;
        }
        assert_eq!(lines, 8 * batch.len());
    }

    #[tokio::test]
    async fn rotation_by_size_keeps_the_newest_files_and_every_record_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.ndjson");
        let rotation = Rotation {
            size: Some(1024),
            interval: None,
            keep: Some(2),
        };
        let mut sink = FileSink::open_rotating(&path, rotation, ReopenHandle::default())
            .await
            .unwrap();
        // More than 1 KiB: the file is rotated before each batch after the first.
        let batch: Vec<Record> = (0..10).map(|_| record()).collect();
        for _ in 0..6 {
            sink.write_batch(&batch).await.unwrap();
        }
        sink.sync().expect("a regular file syncs").await.unwrap();
        let mut rotated = rotated_files(&path).unwrap();
        rotated.sort();
        assert_eq!(rotated.len(), 2, "the two newest rotated files are kept");
        for file in rotated.iter().map(|(_, p)| p).chain([&path]) {
            let text = std::fs::read_to_string(file).unwrap();
            assert_eq!(text.lines().count(), 10, "{}", file.display());
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line).expect("a whole record");
            }
        }
    }

    #[tokio::test]
    async fn rotation_by_age_and_reopen_start_new_files_between_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.ndjson");
        let rotation = Rotation {
            size: None,
            interval: Some(std::time::Duration::from_millis(50)),
            keep: None,
        };
        let reopen = ReopenHandle::default();
        let mut sink = FileSink::open_rotating(&path, rotation, reopen.clone())
            .await
            .unwrap();
        sink.write_batch(&[record()]).await.unwrap();
        // Younger than the interval: same file.
        sink.write_batch(&[record()]).await.unwrap();
        assert_eq!(rotated_files(&path).unwrap().len(), 0);
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        sink.write_batch(&[record()]).await.unwrap();
        assert_eq!(rotated_files(&path).unwrap().len(), 1, "rotated by age");
        // Moved away, then a reopen request: the next batch goes to a new file at the path.
        let moved = dir.path().join("moved.ndjson");
        std::fs::rename(&path, &moved).unwrap();
        reopen.request();
        sink.write_batch(&[record()]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&moved).unwrap().lines().count(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[tokio::test]
    async fn a_file_moved_away_before_its_rotation_is_no_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.ndjson");
        let rotation = Rotation {
            size: Some(1024),
            interval: None,
            keep: None,
        };
        let mut sink = FileSink::open_rotating(&path, rotation, ReopenHandle::default())
            .await
            .unwrap();
        let batch: Vec<Record> = (0..10).map(|_| record()).collect();
        sink.write_batch(&batch).await.unwrap();
        // logrotate moved it, and its signal has not arrived: the rotation is due all the same.
        let moved = dir.path().join("moved.ndjson");
        std::fs::rename(&path, &moved).unwrap();
        sink.write_batch(&batch).await.expect("no failure");
        assert_eq!(std::fs::read_to_string(&moved).unwrap().lines().count(), 10);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 10);
    }

    #[tokio::test]
    async fn a_device_is_written_but_has_nothing_to_sync() {
        let mut sink = FileSink::open(Path::new("/dev/null")).await.unwrap();
        sink.write_batch(&[record()]).await.unwrap();
        assert!(sink.sync().is_none());
    }
}
