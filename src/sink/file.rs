//! NDJSON appended to a file: flushed to the kernel after every batch, synced (`fsync`) as the
//! drain's [`crate::config::FsyncMode`] asks.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::{encode_batch, Sink, SinkError, SinkFuture};
use crate::record::Record;

/// Appends records to a file.
pub struct FileSink {
    path: PathBuf,
    file: tokio::fs::File,
    /// A second handle on the same open file, so `fsync` can run while writing goes on;
    /// `None` for what cannot be synced (a FIFO, a character device such as `/dev/null`).
    sync_handle: Option<Arc<std::fs::File>>,
}

impl FileSink {
    /// Opens (or creates) `path` for appending.
    ///
    /// A file whose last line was cut short (a crash in the middle of a write) gets a newline
    /// first, so the torn line stays one line of its own and the next record is whole. Its items
    /// were never acknowledged: their clients send them again.
    pub async fn open(path: &Path) -> Result<FileSink, SinkError> {
        let owned = path.to_owned();
        let opened = tokio::task::spawn_blocking(move || open_for_append(&owned))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
        let io_error = |source| SinkError::Io {
            sink: format!("file:{}", path.display()),
            source,
        };
        let (file, regular) = opened.map_err(io_error)?;
        let sync_handle = match regular {
            true => Some(Arc::new(file.try_clone().map_err(io_error)?)),
            false => None,
        };
        Ok(FileSink {
            path: path.to_owned(),
            file: tokio::fs::File::from_std(file),
            sync_handle,
        })
    }

    fn io_error(&self) -> impl FnOnce(io::Error) -> SinkError + '_ {
        |source| SinkError::Io {
            sink: self.name(),
            source,
        }
    }
}

/// Opens `path` for appending; says whether it is a regular file (which can be synced and
/// checked for a torn last line).
fn open_for_append(path: &Path) -> io::Result<(std::fs::File, bool)> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let metadata = file.metadata()?;
    if metadata.is_file() && metadata.len() > 0 {
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
            let buf = encode_batch(batch);
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
        Some(Box::pin(async move {
            tokio::task::spawn_blocking(move || handle.sync_data())
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(|source| SinkError::Io { sink, source })
        }))
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

    #[tokio::test]
    async fn a_device_is_written_but_has_nothing_to_sync() {
        let mut sink = FileSink::open(Path::new("/dev/null")).await.unwrap();
        sink.write_batch(&[record()]).await.unwrap();
        assert!(sink.sync().is_none());
    }
}
